// File: cuda/kernels/sampling.cuh
//
// Next-token sampling from fp32 logits, one CTA per row:
//   ArgMaxKernel  greedy: the index of the largest logit, the lowest index on ties (NaNs are ignored);
//   TopPKernel    temperature + nucleus sampling with a caller-given uniform u in [0, 1):
//                 e_i = exp((l_i - max) / T); the nucleus is {i : e_i >= t*} where t* is the largest threshold whose
//                 kept mass sum_{e_i >= t} e_i reaches top_p * sum_i e_i (= the smallest set of most likely tokens
//                 reaching top_p, plus any ties of its last member); the token is the first i of the nucleus, in
//                 index order, whose running kept mass exceeds u * (kept mass). t* is found by bisection on the
//                 float bit pattern (positive floats order like their bits), so no sort is needed.
#ifndef LIVEKV_CUDA_KERNELS_SAMPLING_CUH_
#define LIVEKV_CUDA_KERNELS_SAMPLING_CUH_

#include "cuda/kernels/common.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kSampleThreads = 1024;

// Keeps the better of (v, i) and (ov, oi): larger value, then lower index.
__device__ __forceinline__ void ArgMaxMerge(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

// grid: rows; block: kSampleThreads.
static __global__ void __launch_bounds__(kSampleThreads) ArgMaxKernel(const float* logits, int64_t stride, int32_t vocab,
                                                               int32_t* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* x = logits + blockIdx.x * stride;
  float best = -INFINITY;
  int idx = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (v > best || (v == best && i < idx)) best = v, idx = i;
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    ArgMaxMerge(best, idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = idx;
  __syncthreads();
  if (warp == 0) {
    best = lane < (blockDim.x >> 5) ? sv[lane] : -INFINITY;
    idx = lane < (blockDim.x >> 5) ? si[lane] : INT_MAX;
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      ArgMaxMerge(best, idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
    }
    if (lane == 0) out[blockIdx.x] = idx == INT_MAX ? 0 : idx;
  }
}

// Exclusive prefix sum of one float per thread over the block (thread order); *total = block total.
__device__ __forceinline__ float BlockExclusiveScanF(float v, float* scratch, float* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float inc = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const float n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  float prefix = 0.0f, all = 0.0f;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) prefix += scratch[w];
    all += scratch[w];
  }
  *total = all;
  return prefix + inc - v;
}

struct TopPParams {
  const float* logits;   // [rows][stride]
  int64_t stride;
  int32_t vocab;
  float inv_temperature;
  float top_p;           // (0, 1]
  const float* uniform;  // [rows], in [0, 1)
  float* scratch;        // [rows][vocab] workspace
  int32_t* out;          // [rows]
};

// grid: rows; block: kSampleThreads.
static __global__ void __launch_bounds__(kSampleThreads) TopPKernel(TopPParams p) {
  __shared__ float red[32];
  __shared__ int s_token, s_last;
  const float* x = p.logits + blockIdx.x * p.stride;
  float* e = p.scratch + static_cast<int64_t>(blockIdx.x) * p.vocab;
  const int tid = threadIdx.x;
  float mx = -INFINITY;
  for (int i = tid; i < p.vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = BlockMax(mx, red);
  float z = 0.0f;
  for (int i = tid; i < p.vocab; i += blockDim.x) {
    const float v = x[i];
    const float ev = v == v ? expf((v - mx) * p.inv_temperature) : 0.0f;  // NaN logits get no mass
    e[i] = ev;
    z += ev;
  }
  z = BlockSum(z, red);  // (its barriers also order the e[] writes before the reads below)
  float threshold = 0.0f;
  if (p.top_p < 1.0f) {
    const float target = p.top_p * z;
    uint32_t lo = 0, hi = 0x3f800001u;  // mass(0) = z >= target; mass(> 1) = 0 < target
    while (hi - lo > 1) {
      const uint32_t mid = lo + (hi - lo) / 2;
      const float t = __uint_as_float(mid);
      float s = 0.0f;
      for (int i = tid; i < p.vocab; i += blockDim.x) s += e[i] >= t ? e[i] : 0.0f;
      s = BlockSum(s, red);
      if (s >= target) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    threshold = __uint_as_float(lo);
  }
  // Contiguous chunks per thread, so the running mass follows index order.
  const int per = (p.vocab + blockDim.x - 1) / blockDim.x;
  const int b = min(p.vocab, tid * per), end = min(p.vocab, b + per);
  float local = 0.0f;
  int last = -1;
  for (int i = b; i < end; ++i) {
    if (e[i] >= threshold && e[i] > 0.0f) local += e[i], last = i;
  }
  if (tid == 0) s_token = INT_MAX, s_last = -1;
  float kept = 0.0f;
  const float prefix = BlockExclusiveScanF(local, red, &kept);  // barriers: s_token / s_last initialised
  if (last >= 0) atomicMax(&s_last, last);
  const float target = p.uniform[blockIdx.x] * kept;
  if (local > 0.0f && prefix <= target && target < prefix + local) {
    float run = prefix;
    int pick = last;
    for (int i = b; i < end; ++i) {
      if (e[i] >= threshold && e[i] > 0.0f) {
        run += e[i];
        if (run > target) {
          pick = i;
          break;
        }
      }
    }
    atomicMin(&s_token, pick);
  }
  __syncthreads();
  if (tid == 0) p.out[blockIdx.x] = s_token != INT_MAX ? s_token : max(s_last, 0);
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_SAMPLING_CUH_
