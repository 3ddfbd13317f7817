#include "cuda/ops/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda/ops/elementwise.h"
#include "cuda/runtime/launch.h"
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

// The decode step's fused GEMV (RMSNorm / SwiGLU prologue, x_out, residual epilogue), launched with programmatic
// dependent launch right after a GEMV that writes its input (so GridDependencyWait must order them). The prologue's
// x' is checked against the CPU formula (1 bf16 ulp: the norm's fp32 sum order differs), the product against an
// fp64 reference over the x' the GPU stored, and the residual bit-exactly against bf16(r + bf16(y)).
TEST_F(GemmTest, FusedGemvMatchesReference) {
  auto blas = BlasHandle::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  Gemm gemm(&*blas);
  std::mt19937 rng(12);
  struct Case {
    int64_t k, m;
    GemvFusion::Prologue prologue;
    bool with_out, with_residual, with_x_out, with_bias;
  };
  using P = GemvFusion::Prologue;
  const Case cases[] = {
      {64, 128, P::kRmsNorm, true, false, true, false},  {104, 9, P::kRmsNorm, true, true, true, true},
      {4096, 6151, P::kRmsNorm, true, false, true, false}, {896, 4864, P::kSwiGlu, true, true, true, false},
      {14336, 37, P::kSwiGlu, false, true, false, false}, {4096, 4099, P::kNone, false, true, false, false},
      {72, 8503, P::kSwiGlu, true, false, true, true},     {4096, 28672, P::kRmsNorm, true, false, false, false},
      {1024, 16897, P::kNone, true, true, false, true},
  };
  ScopedPdl pdl(true);
  for (const Case& c : cases) {
    const std::string what = "fused gemv k " + std::to_string(c.k) + " m " + std::to_string(c.m) + " prologue " +
                             std::to_string(static_cast<int>(c.prologue)) + (c.with_residual ? " residual" : "");
    const int64_t kin = c.prologue == P::kSwiGlu ? 2 * c.k : c.k;  // the raw input's width
    // Stage 0: raw = W0 · x0 (a GEMV of its own, so the fused kernel's input is written by its predecessor).
    std::vector<float> x0 = RoundBf16(RandomFloats(64, &rng));
    std::vector<float> w0 = RoundBf16(RandomFloats(kin * 64, &rng, -0.5f, 0.5f));
    std::vector<float> w = RoundBf16(RandomFloats(c.m * c.k, &rng, -0.5f, 0.5f));
    std::vector<float> nw = RoundBf16(RandomFloats(c.k, &rng, 0.5f, 1.5f));
    std::vector<float> bias = RoundBf16(RandomFloats(c.m, &rng));
    std::vector<float> res = RoundBf16(RandomFloats(c.m, &rng, -4.0f, 4.0f));
    auto dx0 = DeviceArray<bf16>::FromHost(ToBf16(x0));
    auto dw0 = DeviceArray<bf16>::FromHost(ToBf16(w0));
    auto dw = DeviceArray<bf16>::FromHost(ToBf16(w));
    auto dnw = DeviceArray<bf16>::FromHost(ToBf16(nw));
    auto db = DeviceArray<bf16>::FromHost(ToBf16(bias));
    auto dres = DeviceArray<bf16>::FromHost(ToBf16(res));
    DeviceArray<bf16> raw(kin), xo(c.k), out(c.m);
    Sync();
    ASSERT_TRUE(gemm.Linear({dx0.get(), 1, 64, dw0.get(), kin, nullptr, raw.get(), GemmOutput::kBf16}, stream()).ok());
    LinearArgs a{raw.get(), 1, c.k, dw.get(), c.m, c.with_bias ? db.get() : nullptr,
                 c.with_out ? out.get() : nullptr, GemmOutput::kBf16};
    GemvFusion f;
    f.prologue = c.prologue;
    f.norm_weight = dnw.get();
    f.eps = 1e-5f;
    f.x_out = c.with_x_out ? xo.get() : nullptr;
    f.residual = c.with_residual ? dres.get() : nullptr;
    ASSERT_TRUE(gemm.FusedGemv(a, f, stream()).ok()) << what;
    Sync();
    const std::vector<float> raw_h = ToFloat(raw.ToHost());
    // x' on the CPU.
    std::vector<float> xp(c.k);
    if (c.prologue == P::kRmsNorm) {
      double ss = 0;
      for (int64_t i = 0; i < c.k; ++i) ss += double(raw_h[i]) * raw_h[i];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / c.k + 1e-5));
      for (int64_t i = 0; i < c.k; ++i) xp[i] = RoundBf16({nw[i] * RoundBf16({raw_h[i] * inv})[0]})[0];
    } else if (c.prologue == P::kSwiGlu) {
      for (int64_t i = 0; i < c.k; ++i) {
        const float g = raw_h[i];
        xp[i] = RoundBf16({g / (1.0f + std::exp(-g)) * raw_h[c.k + i]})[0];
      }
    } else {
      xp.assign(raw_h.begin(), raw_h.begin() + c.k);
    }
    std::vector<float> x_used = xp;
    if (c.with_x_out) {
      const std::vector<float> got = ToFloat(xo.ToHost());
      // Up to two bf16 ulps (2^-7 relative each): the inner rounding may flip with the fp32 sum order (or __expf),
      // and the outer one with it.
      ExpectClose(got, xp, 1e-6f, 4 * kBf16Eps, what + " x_out");
      x_used = got;
    }
    std::vector<float> ref(c.m), tol(c.m);
    for (int64_t j = 0; j < c.m; ++j) {
      double s = 0, sabs = 0;
      for (int64_t t = 0; t < c.k; ++t) {
        s += double(x_used[t]) * w[j * c.k + t];
        sabs += std::fabs(double(x_used[t]) * w[j * c.k + t]);
      }
      if (c.with_bias) s += bias[j], sabs += std::fabs(bias[j]);
      ref[j] = static_cast<float>(s);
      // Without x_out the CPU's x' may differ from the kernel's by two ulps per element: 2^-6 of the absolute sum.
      tol[j] = (c.with_x_out || c.prologue == P::kNone ? 1e-4f : 4 * kBf16Eps) * static_cast<float>(sabs) +
               2 * kBf16Eps * std::fabs(ref[j]);
    }
    std::vector<float> y = ref;
    if (c.with_out) {
      y = ToFloat(out.ToHost());
      ExpectClose(y, ref, tol, 0.0f, what + " out");
    }
    if (c.with_residual) {
      const std::vector<float> got = ToFloat(dres.ToHost());
      if (c.with_out) {
        // Bit-exact against bf16(res + y) from the stored y.
        std::vector<float> want(c.m);
        for (int64_t j = 0; j < c.m; ++j) want[j] = RoundBf16({res[j] + y[j]})[0];
        ExpectClose(got, want, 0.0f, 0.0f, what + " residual");
      } else {
        std::vector<float> want(c.m), rtol(c.m);
        for (int64_t j = 0; j < c.m; ++j) {
          want[j] = res[j] + ref[j];
          rtol[j] = tol[j] + kBf16Eps * (std::fabs(want[j]) + std::fabs(ref[j]));
        }
        ExpectClose(got, want, rtol, 0.0f, what + " residual");
      }
    }
  }
  // Rejected: more than one row, a residual with fp32 output, no output at all, a misaligned x_out.
  DeviceArray<bf16> x(64), wt(64 * 8), o(16);
  DeviceArray<float> o32(8);
  GemvFusion none;
  EXPECT_EQ(gemm.FusedGemv({x.get(), 2, 64, wt.get(), 8, nullptr, o.get(), GemmOutput::kBf16}, none, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  GemvFusion with_res;
  with_res.residual = o.get();
  EXPECT_EQ(gemm.FusedGemv({x.get(), 1, 64, wt.get(), 8, nullptr, o32.get(), GemmOutput::kF32}, with_res, stream())
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.FusedGemv({x.get(), 1, 64, wt.get(), 8, nullptr, nullptr, GemmOutput::kBf16}, none, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  GemvFusion mis;
  mis.prologue = GemvFusion::Prologue::kSwiGlu;
  mis.x_out = o.get() + 1;
  EXPECT_EQ(gemm.FusedGemv({x.get(), 1, 32, wt.get(), 8, nullptr, o.get(), GemmOutput::kBf16}, mis, stream()).code(),
            absl::StatusCode::kInvalidArgument);
}

// The RoPE epilogue against the unfused pair it replaces (the plain GEMV, then SplitQkvRope, itself tested against
// engine/rope.h in elementwise_test): q, k, v and the stored qkv bit for bit, on Llama-3-8B's shape and odd ones.
TEST_F(GemmTest, FusedGemvRopeMatchesSplitQkvRope) {
  auto blas = BlasHandle::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  Gemm gemm(&*blas);
  std::mt19937 rng(13);
  struct Case {
    int32_t hq, hkv, d;
    int64_t k, pos;
    bool norm, bias;
  };
  const Case cases[] = {{32, 8, 128, 4096, 32771, true, false}, {3, 1, 32, 104, 0, false, true},
                        {5, 1, 64, 72, 7, true, true},           {2, 1, 6, 64, 131071, false, false},
                        {12, 2, 128, 896, 1000003, false, true}};
  ScopedPdl pdl(true);
  for (const Case& c : cases) {
    const std::string what = "rope gemv hq " + std::to_string(c.hq) + " hkv " + std::to_string(c.hkv) + " d " +
                             std::to_string(c.d) + " k " + std::to_string(c.k);
    const int64_t m = (int64_t{c.hq} + 2 * c.hkv) * c.d;
    std::vector<float> x = RoundBf16(RandomFloats(c.k, &rng, -2.0f, 2.0f));
    std::vector<float> w = RoundBf16(RandomFloats(m * c.k, &rng, -0.5f, 0.5f));
    std::vector<float> nw = RoundBf16(RandomFloats(c.k, &rng, 0.5f, 1.5f));
    std::vector<float> bias = RoundBf16(RandomFloats(m, &rng));
    std::vector<float> inv_freq(c.d / 2);
    for (int i = 0; i < c.d / 2; ++i) inv_freq[i] = std::pow(500000.0f, -2.0f * i / c.d);
    auto dx = DeviceArray<bf16>::FromHost(ToBf16(x));
    auto dw = DeviceArray<bf16>::FromHost(ToBf16(w));
    auto dnw = DeviceArray<bf16>::FromHost(ToBf16(nw));
    auto db = DeviceArray<bf16>::FromHost(ToBf16(bias));
    auto dfreq = DeviceArray<float>::FromHost(inv_freq);
    DeviceArray<bf16> xn(c.k), qkv(m), q(int64_t{c.hq} * c.d), k(int64_t{c.hkv} * c.d), v(int64_t{c.hkv} * c.d);
    DeviceArray<bf16> qkv2(m), q2(q.size()), k2(k.size()), v2(v.size());
    Sync();
    LinearArgs a{dx.get(), 1, c.k, dw.get(), m, c.bias ? db.get() : nullptr, qkv.get(), GemmOutput::kBf16};
    GemvFusion f;
    if (c.norm) {
      f.prologue = GemvFusion::Prologue::kRmsNorm;
      f.norm_weight = dnw.get();
      f.eps = 1e-5f;
      f.x_out = xn.get();
    }
    f.rope_head_dim = c.d;
    f.rope_q_heads = c.hq;
    f.rope_kv_heads = c.hkv;
    f.inv_freq = dfreq.get();
    f.rope_pos = c.pos;
    f.q = q.get();
    f.k = k.get();
    f.v = v.get();
    ASSERT_TRUE(gemm.FusedGemv(a, f, stream()).ok()) << what;
    // The unfused pair, from the same (normalised) input.
    LinearArgs b = a;
    b.x = c.norm ? xn.get() : dx.get();
    b.out = qkv2.get();
    ASSERT_TRUE(gemm.Linear(b, stream()).ok()) << what;
    ASSERT_TRUE(SplitQkvRope(qkv2.get(), 1, c.hq, c.hkv, c.d, dfreq.get(), nullptr, c.pos, q2.get(), k2.get(),
                             v2.get(), stream())
                    .ok())
        << what;
    Sync();
    EXPECT_EQ(testing::Bits(qkv.ToHost()), testing::Bits(qkv2.ToHost())) << what << ": qkv";
    EXPECT_EQ(testing::Bits(q.ToHost()), testing::Bits(q2.ToHost())) << what << ": q";
    EXPECT_EQ(testing::Bits(k.ToHost()), testing::Bits(k2.ToHost())) << what << ": k";
    EXPECT_EQ(testing::Bits(v.ToHost()), testing::Bits(v2.ToHost())) << what << ": v";
    // Nothing left poisoned (0xFFFF is a NaN).
    for (float e : ToFloat(q.ToHost())) ASSERT_TRUE(std::isfinite(e)) << what;
  }
  // Rejected: a shape that does not match m, and a residual with the epilogue.
  DeviceArray<bf16> x(64), wt(64 * 48), o(48), qb(32), kb(8), vb(8);
  DeviceArray<float> fr(4);
  GemvFusion f;
  f.rope_head_dim = 8;
  f.rope_q_heads = 4;
  f.rope_kv_heads = 1;
  f.inv_freq = fr.get();
  f.q = qb.get(), f.k = kb.get(), f.v = vb.get();
  EXPECT_EQ(gemm.FusedGemv({x.get(), 1, 64, wt.get(), 40, nullptr, o.get(), GemmOutput::kBf16}, f, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  f.residual = o.get();
  EXPECT_EQ(gemm.FusedGemv({x.get(), 1, 64, wt.get(), 48, nullptr, o.get(), GemmOutput::kBf16}, f, stream()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
