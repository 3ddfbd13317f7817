#include "cuda/ops/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda/testing/test_util.h"

namespace livekv {
namespace cuda {
namespace {

using testing::bf16;
using testing::DeviceArray;
using testing::ExpectClose;
using testing::kBf16Eps;
using testing::RandomFloats;
using testing::RoundBf16;
using testing::ToBf16;
using testing::ToFloat;

class GemmTest : public testing::GpuTest {};

TEST_F(GemmTest, LinearMatchesReference) {
  auto blas = BlasHandle::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  Gemm gemm(&*blas);
  std::mt19937 rng(11);
  struct Case {
    int64_t n, k, m;
  };
  for (const Case& c : {Case{1, 64, 128}, Case{7, 97, 33}, Case{33, 128, 257}, Case{5, 4096, 1024},
                        Case{1, 896, 4864}, Case{130, 256, 96}, Case{1, 4096, 6144}, Case{1, 14336, 37},
                        Case{1, 104, 9}, Case{1, 72, 8500}}) {
    for (bool with_bias : {false, true}) {
      for (GemmOutput output : {GemmOutput::kBf16, GemmOutput::kF32}) {
        std::vector<float> x = RoundBf16(RandomFloats(c.n * c.k, &rng));
        std::vector<float> w = RoundBf16(RandomFloats(c.m * c.k, &rng, -0.5f, 0.5f));
        std::vector<float> bias = RoundBf16(RandomFloats(c.m, &rng));
        auto dx = DeviceArray<bf16>::FromHost(ToBf16(x));
        auto dw = DeviceArray<bf16>::FromHost(ToBf16(w));
        auto db = DeviceArray<bf16>::FromHost(ToBf16(bias));
        const bool f32 = output == GemmOutput::kF32;
        DeviceArray<bf16> out16(f32 ? 0 : c.n * c.m);
        DeviceArray<float> out32(f32 ? c.n * c.m : 0);
        LinearArgs a{dx.get(), c.n, c.k, dw.get(), c.m, with_bias ? db.get() : nullptr,
                     f32 ? static_cast<void*>(out32.get()) : static_cast<void*>(out16.get()), output};
        ASSERT_TRUE(gemm.Linear(a, stream()).ok());
        std::vector<float> ref(c.n * c.m), tol(c.n * c.m);
        for (int64_t i = 0; i < c.n; ++i) {
          for (int64_t j = 0; j < c.m; ++j) {
            double s = 0, sabs = 0;
            for (int64_t t = 0; t < c.k; ++t) {
              s += double(x[i * c.k + t]) * w[j * c.k + t];
              sabs += std::fabs(double(x[i * c.k + t]) * w[j * c.k + t]);
            }
            const double product = s;
            if (with_bias) s += bias[j], sabs += std::fabs(bias[j]);
            ref[i * c.m + j] = static_cast<float>(s);
            // fp32 accumulation error (far under 1e-4 of the absolute sum) + bf16 output rounding (1-2 ulp). With a
            // bias, cuBLASLt's bias epilogue (like PyTorch's addmm, which uses it) may round x.w^T to bf16 before
            // adding the bias, so allow one ulp of the product's magnitude too (it matters under cancellation).
            tol[i * c.m + j] = 1e-4f * static_cast<float>(sabs) +
                               (f32 ? 0.0f
                                    : 2 * kBf16Eps * std::fabs(ref[i * c.m + j]) +
                                          (with_bias ? kBf16Eps * static_cast<float>(std::fabs(product)) : 0.0f));
          }
        }
        std::vector<float> got = f32 ? out32.ToHost() : ToFloat(out16.ToHost());
        ExpectClose(got, ref, tol, 0.0f,
                    "linear n " + std::to_string(c.n) + " k " + std::to_string(c.k) + " m " + std::to_string(c.m) +
                        (with_bias ? " bias" : "") + (f32 ? " f32" : " bf16"));
      }
    }
  }
  std::printf("cublasGemmEx fallback calls: %lld, GEMV calls: %lld\n", static_cast<long long>(gemm.fallback_calls()),
              static_cast<long long>(gemm.gemv_calls()));
  EXPECT_GT(gemm.gemv_calls(), 0);
  LinearArgs bad{nullptr, 1, 0, nullptr, 4, nullptr, nullptr, GemmOutput::kBf16};
  EXPECT_EQ(gemm.Linear(bad, stream()).code(), absl::StatusCode::kInvalidArgument);
  LinearArgs empty{nullptr, 0, 8, nullptr, 4, nullptr, nullptr, GemmOutput::kBf16};
  EXPECT_TRUE(gemm.Linear(empty, stream()).ok());
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
