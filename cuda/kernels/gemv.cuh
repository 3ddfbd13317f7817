// File: cuda/kernels/gemv.cuh
//
// The decode-step product y = W x (+ bias) for one token: W bf16 [m][k] (nn.Linear layout, row-major), x bf16 [k],
// fp32 accumulation, y bf16 or fp32 [m]. Bound by reading W once, so it is written for bandwidth: x is staged in
// shared memory once per CTA; each warp owns kRows rows and streams them with 16-byte loads, kRows * kUnroll
// loads in flight per lane before any use (no L1 allocation: W is read once); lanes sum their partial dot products
// with shuffles at the end. No tensor cores: at n = 1 the arithmetic is 2 FLOP per 2 bytes read.
#ifndef LIVEKV_CUDA_KERNELS_GEMV_CUH_
#define LIVEKV_CUDA_KERNELS_GEMV_CUH_

#include "cuda/kernels/common.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kGemvThreads = 256;

struct GemvParams {
  const bf16* w;     // [m][k], rows 16-byte aligned (k % 8 == 0)
  const bf16* x;     // [k], 16-byte aligned
  const bf16* bias;  // [m] or null
  void* out;         // [m] bf16 or fp32
  int32_t m, k;
};

// grid: ceil(m / (8 * kRows)); block: kGemvThreads; dynamic shared memory k * 2 bytes.
template <int kRows, int kUnroll, bool kF32Out>
static __global__ void __launch_bounds__(kGemvThreads) GemvKernel(GemvParams p) {
  extern __shared__ __align__(16) unsigned char smem_x[];
  const int chunks = p.k / 8;
  for (int c = threadIdx.x; c < chunks; c += kGemvThreads) {
    reinterpret_cast<uint4*>(smem_x)[c] = reinterpret_cast<const uint4*>(p.x)[c];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * (kGemvThreads / 32) + warp) * kRows;
  if (row0 >= p.m) return;
  const uint4* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = min(row0 + r, p.m - 1);  // rows past m repeat the last one; their sums are dropped
    rows[r] = reinterpret_cast<const uint4*>(p.w + static_cast<int64_t>(row) * p.k);
  }
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
  int c = lane;
  for (; c + 32 * (kUnroll - 1) < chunks; c += 32 * kUnroll) {
    uint4 wv[kRows][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[r][u] = LoadStreaming(rows[r] + c + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float xf[8];
      Unpack8(reinterpret_cast<const uint4*>(smem_x)[c + 32 * u], xf);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float wf[8];
        Unpack8(wv[r][u], wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] = fmaf(wf[e], xf[e], acc[r]);
      }
    }
  }
  for (; c < chunks; c += 32) {
    float xf[8];
    Unpack8(reinterpret_cast<const uint4*>(smem_x)[c], xf);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float wf[8];
      Unpack8(LoadStreaming(rows[r] + c), wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] = fmaf(wf[e], xf[e], acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = WarpSum(acc[r]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + r;
      if (row < p.m) {
        const float y = acc[r] + (p.bias != nullptr ? ToFloat(p.bias[row]) : 0.0f);
        if (kF32Out) {
          static_cast<float*>(p.out)[row] = y;
        } else {
          static_cast<bf16*>(p.out)[row] = ToBf16(y);
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_GEMV_CUH_
