#include "bench/ceilings.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace livekv::bench {

double MedianSeconds(const std::function<void()>& fn, int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double MemcpyGBps(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 2);  // constructed, so both are pre-faulted
  const double s = MedianSeconds([&] { std::memcpy(b.data(), a.data(), bytes); }, 7, 2);
  return bytes / s / 1e9;
}

double ReadGBps(int threads, size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> a(n, 1.0f);
  std::vector<float> sums(threads * 16);
  const double s = MedianSeconds(
      [&] {
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t) {
          ts.emplace_back([&, t] {
            const size_t b = n * t / threads, e = n * (t + 1) / threads;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t i = b; i + 8 <= e; i += 8) {
              for (int j = 0; j < 8; ++j) acc[j] += a[i + j];
            }
            sums[t * 16] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
          });
        }
        for (auto& th : ts) th.join();
      },
      5, 1);
  return bytes / s / 1e9;
}

double SgemmGflops(int m, int n, int k) {
  std::vector<float> a(size_t{1} * m * k, 0.5f), b(size_t{1} * k * n, 0.25f), c(size_t{1} * m * n);
  const double s = MedianSeconds(
      [&] { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f,
                        c.data(), n); },
      5, 2);
  return 2.0 * m * n * k / s / 1e9;
}

}  // namespace livekv::bench
