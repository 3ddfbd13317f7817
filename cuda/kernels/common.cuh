// File: cuda/kernels/common.cuh
//
// Device helpers shared by the kernels: bf16 <-> fp32, 16-byte packs of 8 bf16, warp and block reductions, and
// the bf16 tensor-core MMA (m16n8k16, fp32 accumulate) with its fragment layouts. Header-only, device code only.
//
// Conventions of the kernel headers: kernels are `static __global__` (internal linkage: several .cu files may
// include one header without duplicate symbols), take one plain view struct with shape comments, and state the
// launch geometry they expect; they allocate nothing and never synchronise with the host.
#ifndef LIVEKV_CUDA_KERNELS_COMMON_CUH_
#define LIVEKV_CUDA_KERNELS_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace livekv {
namespace cuda {
namespace kernels {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;

__host__ __device__ constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float ToFloat(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 ToBf16(float x) { return __float2bfloat16_rn(x); }

// 8 bf16 values in one 16-byte word.
union Pack8 {
  uint4 u;
  __nv_bfloat162 h2[4];
  bf16 h[8];
};

__device__ __forceinline__ void Unpack8(const uint4& u, float (&f)[8]) {
  Pack8 p;
  p.u = u;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(p.h2[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

__device__ __forceinline__ uint4 PackFloats8(const float (&f)[8]) {
  Pack8 p;
#pragma unroll
  for (int i = 0; i < 4; ++i) p.h2[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return p.u;
}

// Read-only, streamed 16-byte load (the data is not re-read by this kernel: skip L1).
__device__ __forceinline__ uint4 LoadStreaming(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// cp.async (sm_80+): a 16-byte global -> shared copy that bypasses registers (and L1: .cg). With src_bytes = 0
// the 16 shared bytes are zero-filled instead (rows past the end of the data). Completion is tracked per thread
// in commit groups: CpAsyncCommit() closes a group, CpAsyncWait<N>() waits until at most N groups are pending.
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending));
}

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// mbarriers (sm_90; no-ops elsewhere): a 64-bit word in shared memory that completes a phase when `count` arrivals
// have been made; waiting on a phase's parity returns once that phase has completed. Arrive has release and wait
// acquire semantics (CTA scope), so what a thread wrote before it arrives is visible to the threads that waited.
__device__ __forceinline__ void MbarrierInit(uint64_t* bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SharedAddress(bar)), "r"(count) : "memory");
#endif
}
// After the initialising thread's MbarrierInit calls, before the barrier that publishes them to the CTA.
__device__ __forceinline__ void FenceMbarrierInit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void MbarrierArrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SharedAddress(bar)) : "memory");
#endif
}
// An arrival made when all of this thread's earlier cp.async copies have landed (counts towards `count`).
__device__ __forceinline__ void MbarrierArriveOnCpAsync(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(SharedAddress(bar)) : "memory");
#endif
}
__device__ __forceinline__ void MbarrierWait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t addr = SharedAddress(bar);
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  }
#endif
}

__device__ __forceinline__ bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Programmatic dependent launch (sm_90; cuda/ops/launch.h). A kernel launched with the programmatic-serialization
// attribute may start while the previous kernel of its stream is still running. GridDependencyWait() blocks until
// that kernel has completed and its writes are visible; before it, a kernel may only read memory no earlier kernel
// still writes (weights) and must write nothing. GridDependentsLaunch() lets the next such kernel start (its CTAs
// then wait in their own GridDependencyWait). Both are no-ops for a kernel launched without the attribute.
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void GridDependentsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <int kWidth = 32>
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = kWidth / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kWidth = 32>
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = kWidth / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. REQUIRES: blockDim.x a multiple of 32, <= 1024, and every
// thread of the block calls it. `scratch` holds 32 floats of shared memory (reusable after the call returns).
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(t);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(t);
}

// Exclusive prefix sum over the block of one int64 per thread (thread order); *total gets the block total.
// Same requirements as BlockSum; `scratch` holds 32 int64.
__device__ __forceinline__ int64_t BlockExclusiveScan(int64_t v, int64_t* scratch, int64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const int64_t n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  int64_t warp_prefix = 0, all = 0;
  for (int w = 0; w < warps; ++w) {
    const int64_t s = scratch[w];
    if (w < warp) warp_prefix += s;
    all += s;
  }
  *total = all;
  return warp_prefix + inc - v;
}

// ---- Tensor cores: mma.sync m16n8k16, bf16 inputs, fp32 accumulators ------------------------------------------
// With g = lane / 4 and t = lane % 4, each thread of the warp holds:
//   A (16x16, row-major) a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..]
//   B (16x8, "col": B[k][n])  b[0] = B[2t..2t+1][g],  b[1] = B[2t+8..2t+9][g]
//   C (16x8)                  c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// (two bf16 per 32-bit register, the lower column / lower k in the low half).
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t PackBf16x2(bf16 lo, bf16 hi) {
  __nv_bfloat162 v;
  v.x = lo;
  v.y = hi;
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t LoadU32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// ldmatrix: four 8x8 bf16 matrices from shared memory; lane l gives the (16-byte aligned) address of row l % 8 of
// matrix l / 8. Without .trans, r[i] = M_i[g][2t..2t+1] (g = lane / 4, t = lane % 4): the B fragment of MmaBf16
// when M's rows are B's columns. With .trans, r[i] = {M_i[2t][g], M_i[2t+1][g]}: the B fragment when M's rows are
// B's rows (k).
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_COMMON_CUH_
