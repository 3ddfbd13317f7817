// File: cuda/kernels/wgmma.cuh
//
// Hopper warpgroup matrix multiply (wgmma, sm_90a only): four consecutive warps starting at a warp index divisible
// by 4 issue one asynchronous MMA whose operands come from shared memory through 64-bit matrix descriptors.
//
// Shared-memory layout used here (the canonical "K-major, 128-byte swizzle" one): an operand of R rows and K bf16
// columns is stored as K / 64 column blocks of R rows x 128 bytes (64 elements); in a block, the 16-byte chunk c
// (elements 8c .. 8c + 7) of row r lies at r * 128 + ((c ^ (r % 8)) * 16). Blocks must start 1024-byte aligned
// (the swizzle is computed from the address bits). A descriptor names 8-row groups 1024 bytes apart (stride byte
// offset); a k-step of 16 elements within a block advances its start address by 32 bytes.
//
// Accumulators of an m64nN instruction, per thread (warp w of the group, g = lane / 4, t = lane % 4): for n-tile j
// (columns 8j .. 8j + 7), d[4j + 0..1] = D[16w + g][8j + 2t .. + 1] and d[4j + 2..3] = D[16w + g + 8][8j + 2t .. + 1]
// -- the mma.sync C fragment of common.cuh, one per n-tile.
//
// Everything here compiles to nothing outside sm_90a (the compute_90 PTX of the build): callers guard their use
// with LIVEKV_HAS_WGMMA and pick another kernel on other devices.
#ifndef LIVEKV_CUDA_KERNELS_WGMMA_CUH_
#define LIVEKV_CUDA_KERNELS_WGMMA_CUH_

#include "cuda/kernels/common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LIVEKV_HAS_WGMMA 1
#else
#define LIVEKV_HAS_WGMMA 0
#endif

namespace livekv {
namespace cuda {
namespace kernels {

// Byte offset of chunk c (0-7) of row r in a 128-byte-swizzled column block.
__device__ __forceinline__ uint32_t Swizzle128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// The calling thread's warpgroup (threadIdx.x / 128) as a value the compiler knows to be uniform over the warp (a
// shuffle from lane 0): the operand addresses and descriptors derived from it are then computed once per warp in
// uniform registers, instead of per thread and moved over (R2UR) before every wgmma.
__device__ __forceinline__ int WarpgroupIndex() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
}

// Descriptor of a 128-byte-swizzled operand whose 16-element k-step starts at shared address `addr`, 8-row groups
// 1024 bytes apart. K-major: the rows are M or N, the leading byte offset is unused. MN-major (imm-trans 1; rows are
// k, 64 M or N elements per row): `leading_bytes` is the distance between the 64-element column blocks.
__device__ __forceinline__ uint64_t WgmmaDescriptor(uint32_t addr, uint32_t leading_bytes = 16) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) |  // 8-row groups
         (static_cast<uint64_t>(1) << 62);           // 128-byte swizzle
}

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async after its wait) before later
// async-proxy reads (wgmma operands); then a barrier publishes them to the warpgroup.
__device__ __forceinline__ void FenceProxyAsync() {
#if LIVEKV_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaFence() {
#if LIVEKV_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#if LIVEKV_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#if LIVEKV_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#endif
}
// Keeps the compiler from moving accesses of accumulator registers across the asynchronous MMA's issue and wait.
template <int kN>
__device__ __forceinline__ void WgmmaFenceOperands(float (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x 128 fp32) = A (64 x 16) B^T (B: 128 rows x 16, K-major in shared memory), plus d when `accumulate`; A from
// registers as in WgmmaRegATransB.
__device__ __forceinline__ void WgmmaRegAM64N128K16(float (&d)[64], const uint32_t (&a)[4], uint64_t b,
                                                    bool accumulate) {
#if LIVEKV_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#endif
}

// ---- Warp specialization: register reallocation (the mbarrier helpers are in common.cuh) -------------------------
// The calling warpgroup's registers per thread become kRegs (a multiple of 8 in 24..256): a producer gives registers
// back, the consumers then take them (all warps of the warpgroup execute it).
template <int kRegs>
__device__ __forceinline__ void WarpgroupRegistersDecrease() {
#if LIVEKV_HAS_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void WarpgroupRegistersIncrease() {
#if LIVEKV_HAS_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
#endif
}

// d (64 x 64 fp32) = A (64 x 16) B^T (B: 64 rows x 16), plus d when `accumulate`; A and B K-major in shared memory.
__device__ __forceinline__ void WgmmaM64N64K16(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
#if LIVEKV_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
#endif
}

// d (64 x N fp32) = A (64 x 16) B (16 x N), plus d when `accumulate`: A from registers (each warp of the group holds
// its 16 rows as the mma.sync A fragment of common.cuh: a[0] = A[g][2t..], a[1] = A[g + 8][2t..], a[2] = A[g][2t +
// 8..], a[3] = A[g + 8][2t + 8..]), B MN-major in shared memory (its k rows hold N contiguous elements). N = 64, 128.
template <int N>
__device__ __forceinline__ void WgmmaRegATransB(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, bool accumulate);
template <>
__device__ __forceinline__ void WgmmaRegATransB<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
#if LIVEKV_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#endif
}
template <>
__device__ __forceinline__ void WgmmaRegATransB<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
#if LIVEKV_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#endif
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_WGMMA_CUH_
