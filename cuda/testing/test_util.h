// File: cuda/testing/test_util.h
//
// Helpers for GPU kernel tests: skipping where no device exists, device arrays that are poisoned (every byte
// 0xFF: NaN for bf16/f16/fp32, -1 for integers) before a kernel writes them, bf16 conversion of host data, random
// inputs, and comparisons that report the first mismatches.
//
//   class MyTest : public livekv::cuda::testing::GpuTest {};   // skips every test when no GPU is present
//   TEST_F(MyTest, Works) {
//     DeviceArray<__nv_bfloat16> x = DeviceArray<__nv_bfloat16>::FromHost(ToBf16(values));
//     DeviceArray<__nv_bfloat16> y(n);   // poisoned
//     ...
//     std::vector<float> got = ToFloat(y.ToHost());
//   }
#ifndef LIVEKV_CUDA_TESTING_TEST_UTIL_H_
#define LIVEKV_CUDA_TESTING_TEST_UTIL_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/stream.h"
#include "engine/dtype.h"

namespace livekv {
namespace cuda {
namespace testing {

// A fixture that skips its tests where cudaGetDeviceCount fails or finds no device, and gives each test a
// non-blocking stream.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount failed or returned 0)";
    auto s = Stream::Create();
    ASSERT_TRUE(s.ok()) << s.status();
    stream_ = std::move(*s);
  }
  void Sync() { ASSERT_TRUE(stream_.Synchronize().ok()); }
  cudaStream_t stream() const { return stream_.get(); }

  Stream stream_;
};

// A typed device array, poisoned on creation.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : n_(n) {
    auto b = DeviceBuffer::Create(n * sizeof(T));
    CHECK_OK_OR_DIE(b.status());
    buf_ = std::move(*b);
    Poison();
  }
  static DeviceArray FromHost(const std::vector<T>& v) {
    DeviceArray a(v.size());
    a.Upload(v);
    return a;
  }
  void Upload(const std::vector<T>& v) {
    CHECK_OK_OR_DIE(CudaStatus(cudaMemcpy(buf_.data(), v.data(), std::min(v.size(), n_) * sizeof(T),
                                          cudaMemcpyHostToDevice), "upload"));
    // A pageable cudaMemcpy may return before its DMA lands, and our streams do not wait for the legacy stream.
    CHECK_OK_OR_DIE(CudaStatus(cudaDeviceSynchronize(), "sync after upload"));
  }
  void Poison() {
    if (n_ > 0) CHECK_OK_OR_DIE(CudaStatus(cudaMemset(buf_.data(), 0xFF, n_ * sizeof(T)), "poison"));
    CHECK_OK_OR_DIE(CudaStatus(cudaDeviceSynchronize(), "sync after poison"));  // cudaMemset is asynchronous
  }
  std::vector<T> ToHost() const {
    std::vector<T> v(n_);
    CHECK_OK_OR_DIE(CudaStatus(cudaDeviceSynchronize(), "sync before download"));
    if (n_ > 0) {
      CHECK_OK_OR_DIE(CudaStatus(cudaMemcpy(v.data(), buf_.data(), n_ * sizeof(T), cudaMemcpyDeviceToHost), "download"));
    }
    return v;
  }
  T* get() const { return buf_.as<T>(); }
  size_t size() const { return n_; }

 private:
  static void CHECK_OK_OR_DIE(const absl::Status& s) {
    if (!s.ok()) {
      ADD_FAILURE() << s;
      std::abort();
    }
  }
  DeviceBuffer buf_;
  size_t n_ = 0;
};

using bf16 = __nv_bfloat16;

inline std::vector<bf16> ToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t bits = F32ToBF16(v[i]);
    std::memcpy(static_cast<void*>(&out[i]), &bits, 2);
  }
  return out;
}

inline std::vector<float> ToFloat(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, static_cast<const void*>(&v[i]), 2);
    out[i] = BF16ToF32(bits);
  }
  return out;
}

// Values rounded to bf16 and back, so a CPU reference sees exactly what the GPU reads.
inline std::vector<float> RoundBf16(const std::vector<float>& v) { return ToFloat(ToBf16(v)); }

inline std::vector<float> RandomFloats(size_t n, std::mt19937* rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(*rng);
  return v;
}

inline std::vector<uint16_t> Bits(const std::vector<bf16>& v) {
  std::vector<uint16_t> out(v.size());
  std::memcpy(out.data(), static_cast<const void*>(v.data()), v.size() * 2);
  return out;
}

// Expects |got - ref| <= abs_tol[i] + rel_tol * |ref| element-wise and every got finite; reports the count of
// failures and the first few with their indices. abs_tol may hold one value (broadcast) or one per element.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& abs_tol,
                        float rel_tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0, nonfinite = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const float tol = (abs_tol.size() == 1 ? abs_tol[0] : abs_tol[i]) + rel_tol * std::fabs(ref[i]);
    const bool finite = std::isfinite(got[i]);
    if (!finite) ++nonfinite;
    if (!finite || !(std::fabs(got[i] - ref[i]) <= tol)) {
      if (bad < 5) {
        first += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " + std::to_string(ref[i]) +
                 " tol " + std::to_string(tol);
      }
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements differ (" << nonfinite
                     << " not finite, e.g. unwritten/poisoned)" << first;
}

inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& ref, float abs_tol, float rel_tol,
                        const std::string& what) {
  ExpectClose(got, ref, std::vector<float>{abs_tol}, rel_tol, what);
}

// bf16 has 8 significant bits: one rounding is at most 2^-8 relative (half an ulp is 2^-9; we allow a full ulp).
inline constexpr float kBf16Eps = 1.0f / 256.0f;

}  // namespace testing
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_TESTING_TEST_UTIL_H_
