// File: cuda/kernels/gemv.cuh
//
// The decode-step product y = W x (+ bias) for one token: W bf16 [m][k] (nn.Linear layout, row-major), x bf16 [k],
// fp32 accumulation, y bf16 or fp32 [m]. Bound by reading W once, so it is written for bandwidth: x is staged in
// shared memory once per CTA; each warp owns kRows rows and streams them with 16-byte loads, the next kRows * kUnroll
// loads per lane issued before the current ones are used (no L1 allocation: W is read once); lanes sum their partial dot products
// with shuffles at the end. No tensor cores: at n = 1 the arithmetic is 2 FLOP per 2 bytes read.
//
// Fusions for the decode step (each replaces a separate small kernel and its launch):
//   prologue kGemvRmsNorm  x is normalised on the fly: weight * bf16(x / sqrt(mean(x^2) + eps)) (RmsNormKernel's
//                          formula), computed by every CTA from the raw x;
//   prologue kGemvSwiGlu   x = bf16(silu(gate) * up) from gate_up [2k] (SwiGluKernel's formula);
//   x_out                  CTA 0 also stores the prologue's x (what the unfused op would have written);
//   residual               residual[j] = bf16(residual[j] + bf16(y[j])) (AddKernel's formula), and y is still stored;
//   RoPE epilogue          the QKV projection's rows split into q, k (rotated) and v (QkvRopeKernel's formulas).
// Programmatic dependent launch: the first kRows * kUnroll weight loads per lane are issued before
// GridDependencyWait(), so they overlap the previous kernel's tail.
#ifndef LIVEKV_CUDA_KERNELS_GEMV_CUH_
#define LIVEKV_CUDA_KERNELS_GEMV_CUH_

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/elementwise.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kGemvThreads = 256;

enum GemvPrologue : int32_t { kGemvPlain = 0, kGemvRmsNorm = 1, kGemvSwiGlu = 2 };

struct GemvParams {
  const bf16* w;            // [m][k], rows 16-byte aligned (k % 8 == 0)
  const bf16* x;            // [k] (kGemvSwiGlu: gate_up [2k]), 16-byte aligned
  const bf16* bias;         // [m] or null
  void* out;                // [m] bf16 or fp32 (may be null with a residual)
  int32_t m, k;
  int32_t prologue = kGemvPlain;
  const bf16* norm_weight = nullptr;  // [k] (kGemvRmsNorm)
  float eps = 0.0f;
  bf16* x_out = nullptr;    // [k] or null: the prologue's x, stored by CTA 0; must not alias x
  bf16* residual = nullptr; // [m] or null (bf16 output only): residual += bf16(y); must not alias x or out
  // RoPE epilogue (GemvKernel<2, kUnroll, false, true> only): the product is one token's fused QKV projection,
  // m = (hq + 2 hkv) * d; q [hq][d], k [hkv][d] receive the rotated heads, v [hkv][d] the rest (QkvRopeKernel's
  // formulas, angle = float(pos) * inv_freq[i]).
  int32_t rope_d = 0, rope_hq = 0;
  int32_t rope_rows = 0;    // (hq + hkv) * d: rows that are rotated
  const float* inv_freq = nullptr;
  int64_t rope_pos = 0;
  bf16* q = nullptr;
  bf16* k_out = nullptr;
  bf16* v_out = nullptr;
};

// grid: ceil(m / (8 * kRows)); block: kGemvThreads; dynamic shared memory k * 2 bytes.
// kRopePairs (kRows = 2, bf16 output): warp j owns the rows of RoPE pair j, head * d + i and head * d + i + d / 2
// (i < d / 2), so the epilogue can rotate them; a pair's rows are summed in the same order as in the plain kernel.
template <int kRows, int kUnroll, bool kF32Out, bool kRopePairs = false>
static __global__ void __launch_bounds__(kGemvThreads) GemvKernel(GemvParams p) {
  static_assert(!kRopePairs || (kRows == 2 && !kF32Out), "RoPE pairs: two bf16 rows per warp");
  extern __shared__ __align__(16) unsigned char smem_x[];
  __shared__ float scratch[32];
  const int chunks = p.k / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wid = blockIdx.x * (kGemvThreads / 32) + warp;
  int row_of[kRows];
  bool active;
  if constexpr (kRopePairs) {
    const int half = p.rope_d / 2;
    const int head = wid / half, i = wid % half;
    row_of[0] = head * p.rope_d + i;
    row_of[1] = row_of[0] + half;
    active = wid < p.m / 2;
  } else {
#pragma unroll
    for (int r = 0; r < kRows; ++r) row_of[r] = wid * kRows + r;
    active = row_of[0] < p.m;
  }
  const uint4* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = min(row_of[r], p.m - 1);  // rows past m repeat the last one; their sums are dropped
    rows[r] = reinterpret_cast<const uint4*>(p.w + static_cast<int64_t>(row) * p.k);
  }
  // The weights are not written by the previous kernel: the first step's loads go out before waiting for it.
  // Steps of 32 * kUnroll chunks per lane; the next step's loads are issued before the current step's math.
  uint4 cur[kRows][kUnroll];
  int wc = lane;
  bool have = active && wc + 32 * (kUnroll - 1) < chunks;
  if (have) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) cur[r][u] = LoadStreaming(rows[r] + wc + 32 * u);
    }
  }
  GridDependencyWait();
  GridDependentsLaunch();

  uint4* sx = reinterpret_cast<uint4*>(smem_x);
  const uint4* xv = reinterpret_cast<const uint4*>(p.x);
  uint4* xo = blockIdx.x == 0 ? reinterpret_cast<uint4*>(p.x_out) : nullptr;
  if (p.prologue == kGemvRmsNorm) {
    float ss = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += kGemvThreads) {
      const uint4 v = xv[c];
      sx[c] = v;
      float f[8];
      Unpack8(v, f);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
    }
    ss = BlockSum(ss, scratch);
    const float inv = rsqrtf(ss / static_cast<float>(p.k) + p.eps);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    for (int c = threadIdx.x; c < chunks; c += kGemvThreads) {
      float f[8], w[8];
      Unpack8(sx[c], f);  // written by this thread above
      Unpack8(nw[c], w);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = w[i] * ToFloat(ToBf16(f[i] * inv));
      const uint4 o = PackFloats8(f);
      sx[c] = o;
      if (xo != nullptr) xo[c] = o;
    }
  } else if (p.prologue == kGemvSwiGlu) {
    for (int c = threadIdx.x; c < chunks; c += kGemvThreads) {
      float gf[8], uf[8];
      Unpack8(xv[c], gf);
      Unpack8(xv[chunks + c], uf);
#pragma unroll
      for (int i = 0; i < 8; ++i) gf[i] = Silu(gf[i]) * uf[i];
      const uint4 o = PackFloats8(gf);
      sx[c] = o;
      if (xo != nullptr) xo[c] = o;
    }
  } else {
    for (int c = threadIdx.x; c < chunks; c += kGemvThreads) sx[c] = xv[c];
  }
  __syncthreads();
  if (!active) return;

  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
  while (have) {
    const int cn = wc + 32 * kUnroll;
    const bool next = cn + 32 * (kUnroll - 1) < chunks;
    uint4 nxt[kRows][kUnroll];
    if (next) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) nxt[r][u] = LoadStreaming(rows[r] + cn + 32 * u);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float xf[8];
      Unpack8(sx[wc + 32 * u], xf);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float wf[8];
        Unpack8(cur[r][u], wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] = fmaf(wf[e], xf[e], acc[r]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) cur[r][u] = nxt[r][u];
    }
    wc = cn;
    have = next;
  }
  for (; wc < chunks; wc += 32) {
    float xf[8];
    Unpack8(sx[wc], xf);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float wf[8];
      Unpack8(LoadStreaming(rows[r] + wc), wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] = fmaf(wf[e], xf[e], acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = WarpSum(acc[r]);
  if constexpr (kRopePairs) {
    if (lane == 0) {
      bf16 yb[2];
      float yf[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        yb[r] = ToBf16(acc[r] + (p.bias != nullptr ? ToFloat(p.bias[row_of[r]]) : 0.0f));
        yf[r] = ToFloat(yb[r]);
        if (p.out != nullptr) static_cast<bf16*>(p.out)[row_of[r]] = yb[r];
      }
      if (row_of[0] < p.rope_rows) {
        const int half = p.rope_d / 2;
        const int head = wid / half, i = wid % half;
        float sn, cs;
        sincosf(static_cast<float>(p.rope_pos) * p.inv_freq[i], &sn, &cs);
        bf16* dst = head < p.rope_hq ? p.q + static_cast<int64_t>(head) * p.rope_d
                                     : p.k_out + static_cast<int64_t>(head - p.rope_hq) * p.rope_d;
        dst[i] = ToBf16(yf[0] * cs - yf[1] * sn);
        dst[i + half] = ToBf16(yf[1] * cs + yf[0] * sn);
      } else {
        p.v_out[row_of[0] - p.rope_rows] = yb[0];
        p.v_out[row_of[1] - p.rope_rows] = yb[1];
      }
    }
    return;
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = row_of[r];
      if (row < p.m) {
        const float y = acc[r] + (p.bias != nullptr ? ToFloat(p.bias[row]) : 0.0f);
        if (kF32Out) {
          static_cast<float*>(p.out)[row] = y;
        } else {
          const bf16 yb = ToBf16(y);
          if (p.out != nullptr) static_cast<bf16*>(p.out)[row] = yb;
          if (p.residual != nullptr) p.residual[row] = ToBf16(ToFloat(p.residual[row]) + ToFloat(yb));
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_GEMV_CUH_
