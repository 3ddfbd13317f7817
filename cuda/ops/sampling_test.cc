// Sampling kernels against engine/sampler.h (greedy) and an fp64 reference of the nucleus definition.
#include "cuda/ops/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "cuda/testing/test_util.h"
#include "engine/sampler.h"

namespace livekv {
namespace cuda {
namespace {

using testing::DeviceArray;
using testing::RandomFloats;

class SamplingTest : public testing::GpuTest {};

TEST_F(SamplingTest, ArgMaxMatchesGreedySampler) {
  std::mt19937 rng(61);
  for (int32_t vocab : {1, 7, 1000, 151936}) {
    const int32_t rows = 3;
    const int64_t stride = vocab + 5;
    std::vector<float> logits = RandomFloats(rows * stride, &rng, -10, 10);
    // Row 1: ties at the max (the lowest index must win); row 2: everything equal.
    if (vocab > 3) {
      const float m = *std::max_element(logits.begin() + stride, logits.begin() + stride + vocab) + 1.0f;
      logits[stride + vocab - 1] = m;
      logits[stride + vocab / 2] = m;
      logits[stride + 2] = m;
    }
    std::fill(logits.begin() + 2 * stride, logits.begin() + 2 * stride + vocab, 0.5f);
    auto d = DeviceArray<float>::FromHost(logits);
    DeviceArray<int32_t> out(rows);
    ASSERT_TRUE(SampleArgMax(d.get(), rows, stride, vocab, out.get(), stream()).ok());
    std::vector<int32_t> got = out.ToHost();
    for (int r = 0; r < rows; ++r) {
      Sampler greedy(SamplingParams{});
      EXPECT_EQ(got[r], greedy.Sample(absl::MakeConstSpan(logits.data() + r * stride, vocab))) << "vocab " << vocab << " row " << r;
    }
  }
}

// fp64 reference of the nucleus definition (cuda/kernels/sampling.cuh).
struct Nucleus {
  std::vector<double> e;  // exp((l - max) / T)
  double threshold = 0;   // members: e >= threshold
  bool ambiguous = false; // the cut-off is within rounding of top_p (the GPU may keep one token more or less)
};

Nucleus Reference(const float* x, int vocab, double temperature, double top_p) {
  Nucleus n;
  double mx = -INFINITY;
  for (int i = 0; i < vocab; ++i) mx = std::max(mx, double(x[i]));
  n.e.resize(vocab);
  double z = 0;
  for (int i = 0; i < vocab; ++i) z += (n.e[i] = std::exp((double(x[i]) - mx) / temperature));
  if (top_p < 1) {
    std::vector<double> s = n.e;
    std::sort(s.begin(), s.end(), std::greater<double>());
    double cum = 0;
    size_t k = 0;
    for (; k + 1 < s.size(); ++k) {
      cum += s[k];
      if (cum >= top_p * z) break;
    }
    const double margin = 1e-5 * z;  // fp32 sums over <= 32k terms are far more accurate than this
    n.ambiguous = std::fabs(cum - top_p * z) < margin || std::fabs(cum - s[k] - top_p * z) < margin ||
                  (k + 1 < s.size() && s[k + 1] > s[k] * (1 - 1e-5));
    n.threshold = s[k];
  }
  return n;
}

TEST_F(SamplingTest, TopPMatchesReference) {
  std::mt19937 rng(62);
  int exact = 0, checked = 0, ambiguous = 0;
  for (int32_t vocab : {7, 1000, 32000}) {
    for (float temperature : {0.7f, 1.0f, 2.0f}) {
      for (float top_p : {1.0f, 0.9f, 0.5f, 0.01f}) {
        const int32_t rows = 8;
        std::vector<float> logits = RandomFloats(size_t(rows) * vocab, &rng, -8, 8);
        std::vector<float> u = RandomFloats(rows, &rng, 0.0f, 0.999f);
        auto d = DeviceArray<float>::FromHost(logits);
        auto du = DeviceArray<float>::FromHost(u);
        DeviceArray<int32_t> out(rows);
        DeviceArray<uint8_t> ws(SampleTopPWorkspaceBytes(rows, vocab));
        ASSERT_TRUE(SampleTopP(d.get(), rows, vocab, vocab, temperature, top_p, du.get(), out.get(), ws.get(), ws.size(),
                               stream()).ok());
        std::vector<int32_t> got = out.ToHost();
        for (int r = 0; r < rows; ++r) {
          const Nucleus n = Reference(&logits[size_t(r) * vocab], vocab, temperature, top_p);
          const int tok = got[r];
          ASSERT_GE(tok, 0);
          ASSERT_LT(tok, vocab);
          if (n.ambiguous) {
            ++ambiguous;
            continue;
          }
          ++checked;
          // The token must be in the nucleus, and u * kept must fall in its interval of the running kept mass in
          // index order, up to fp32 rounding of the GPU's sums (1e-5 of the kept mass).
          double kept = 0, before = -1, want_before = 0;
          int want = -1;
          for (int i = 0; i < vocab; ++i) kept += n.e[i] >= n.threshold ? n.e[i] : 0;
          const double target = u[r] * kept;
          double run = 0;
          for (int i = 0; i < vocab; ++i) {
            if (n.e[i] < n.threshold) continue;
            if (i == tok) before = run;
            if (want < 0 && run + n.e[i] > target) want = i, want_before = run;
            run += n.e[i];
          }
          (void)want_before;
          const std::string what = "vocab " + std::to_string(vocab) + " T " + std::to_string(temperature) + " top_p " +
                                   std::to_string(top_p) + " u " + std::to_string(u[r]) + ": got " + std::to_string(tok) +
                                   " want " + std::to_string(want);
          ASSERT_GE(before, 0.0) << what << " (token outside the nucleus)";
          const double m = 1e-5 * kept;
          EXPECT_LE(before, target + m) << what;
          EXPECT_GT(before + n.e[tok], target - m) << what;
          exact += tok == want;
        }
      }
    }
  }
  EXPECT_GT(checked, 10 * ambiguous) << checked << " checked, " << ambiguous << " ambiguous";
  EXPECT_GE(exact, checked * 9 / 10) << exact << " of " << checked << " identical to the fp64 draw";
  // temperature 0 is greedy; bad parameters are rejected.
  std::vector<float> logits = {0.1f, 3.0f, 3.0f, -1.0f};
  auto d = DeviceArray<float>::FromHost(logits);
  DeviceArray<int32_t> out(1);
  ASSERT_TRUE(SampleTopP(d.get(), 1, 4, 4, 0.0f, 0.5f, nullptr, out.get(), nullptr, 0, stream()).ok());
  EXPECT_EQ(out.ToHost()[0], 1);
  EXPECT_EQ(SampleTopP(d.get(), 1, 4, 4, 1.0f, 0.0f, nullptr, out.get(), nullptr, 0, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  // A tiny top_p keeps only the most likely token.
  std::vector<float> u = {0.99f};
  auto du = DeviceArray<float>::FromHost(u);
  std::vector<float> peaked = {0.0f, 5.0f, 1.0f, 4.9f};
  auto dp = DeviceArray<float>::FromHost(peaked);
  DeviceArray<uint8_t> ws(SampleTopPWorkspaceBytes(1, 4));
  ASSERT_TRUE(SampleTopP(dp.get(), 1, 4, 4, 1.0f, 0.01f, du.get(), out.get(), ws.get(), ws.size(), stream()).ok());
  EXPECT_EQ(out.ToHost()[0], 1);
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
