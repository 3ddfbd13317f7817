// File: cuda/kernels/kmeans.cuh
//
// Spherical Lloyd k-means over the keys of many KV heads at once (ClusterKV's clustering, kvcache/kmeans.h's
// contract without its re-seeding): assignment = argmax over centroids of the point's dot product with the
// L2-normalised centroid (= argmax of cosine; ties to the lower index), update = plain fp32 mean of the raw member
// points, an empty cluster keeping its centroid. C is unbounded (centroid tiles are streamed).
//
// Assignment runs on bf16 tensor cores (AssignWgmmaKernel on Hopper, AssignKernel with mma.sync elsewhere): the
// points are bf16 already and the normalised centroids are rounded to
// bf16, so a score may move by up to 2^-9 |p| and near-ties may resolve differently than in fp32 (the tests check
// near-optimality, not bit equality, for that reason).
#ifndef LIVEKV_CUDA_KERNELS_KMEANS_CUH_
#define LIVEKV_CUDA_KERNELS_KMEANS_CUH_

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/wgmma.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

// Point i of head h lives at data + h * head_stride + i * row_stride (elements; both multiples of 8 for the
// 16-byte loads of the assignment). Token-major keys [n][heads][dim]: row_stride = heads * dim, head_stride = dim.
struct PointsView {
  const bf16* data;
  int64_t head_stride;
  int64_t row_stride;
  int32_t heads, n, dim;
  __device__ __forceinline__ const bf16* Point(int h, int64_t i) const {
    return data + h * head_stride + i * row_stride;
  }
};

// Every kernel here begins with KMeansKernelStart(). kmeans.cu launches them with programmatic dependent launch
// (cuda/runtime/launch.h): a kernel waits for its predecessor's writes before touching anything. The long kernels
// (assignment, mean) let their successor start when a CTA's work is done (GridDependentsLaunch), the others when
// they exit: the successor's launch overlaps the tail, and its waiting CTAs do not hold SMs that another stream's
// kernels (the prefill beside the clustering) could use for longer than that tail.
__device__ __forceinline__ void KMeansKernelStart() { GridDependencyWait(); }

// Early stop (KMeansRun with a stop fraction): control = {labels changed by the last assignment, stop}. Every
// kernel of an iteration returns at once when control[1] is set (the launches stay, the work goes); control may be
// null (no early stop).
__device__ __forceinline__ bool KMeansStopped(const int32_t* control) { return control != nullptr && control[1] != 0; }

// out[r] = c[r] / ||c[r]|| (a zero row stays zero), rows of `dim` fp32 -> bf16. One warp per row.
static __global__ void NormalizeRowsKernel(const float* c, bf16* out, int64_t rows, int dim, const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* x = c + row * dim;
  float ss = 0.0f;
  for (int d = lane; d < dim; d += 32) ss += x[d] * x[d];
  ss = WarpSum(ss);
  const float inv = ss > 0.0f ? rsqrtf(ss) : 0.0f;
  for (int d = lane; d < dim; d += 32) out[row * dim + d] = ToBf16(x[d] * inv);
}

// The assignment kernel: each warp keeps its points' A fragments in registers for the whole kernel and streams the
// centroids through a ring of shared-memory tiles filled by cp.async (kAssignStages deep), read with ldmatrix.
constexpr int kAssignWarps = 4;
constexpr int kAssignThreads = kAssignWarps * 32;
constexpr int kAssignTileCols = 64;  // centroids per shared-memory tile
constexpr int kAssignStages = 2;     // 70 KB of shared memory at d 128: three CTAs per SM

template <int kD>
struct AssignShape {
  static constexpr int kMTiles = kD <= 128 ? 2 : 1;          // 16-point m-tiles per warp (64 A registers at most)
  static constexpr int kRows = kAssignWarps * 16 * kMTiles;  // points per CTA
  static constexpr int kStride = kD + 8;                     // shared row stride (bf16): conflict-free ldmatrix
};

template <int kD>
constexpr size_t AssignSharedBytes() {
  return static_cast<size_t>(AssignShape<kD>::kRows + kAssignStages * kAssignTileCols) * (kD + 8) * sizeof(bf16);
}

// The end of an assignment: each thread holds, for rows g and g + 8 (g = lane / 4) of its warp's 16 in each of kM
// m-tiles (m-tile m's row 0 is point rows[m]), the best score and column over its quarter of the columns. The quad
// reduces them (ties to the lower column) and its first lane stores the labels, counting them into `counts` and the
// changed ones into control[0] (either may be null).
template <int kM>
__device__ __forceinline__ void StoreLabels(const PointsView& pts, int h, int32_t C, const int64_t (&rows)[kM],
                                            float (&best)[kM][2], int (&idx)[kM][2], int32_t* labels, int32_t* counts,
                                            int32_t* control) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  int changed = 0;
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int off = 1; off <= 2; off *= 2) {
        const float v = __shfl_xor_sync(0xffffffffu, best[m][r], off);
        const int i = __shfl_xor_sync(0xffffffffu, idx[m][r], off);
        if (v > best[m][r] || (v == best[m][r] && i < idx[m][r])) best[m][r] = v, idx[m][r] = i;
      }
      const int64_t row = rows[m] + r * 8 + g;
      if (t == 0 && row < pts.n) {
        int32_t* l = labels + static_cast<int64_t>(h) * pts.n + row;
        if (control != nullptr) changed += *l != idx[m][r];
        *l = idx[m][r];
        if (counts != nullptr) atomicAdd(&counts[static_cast<int64_t>(h) * C + idx[m][r]], 1);
      }
    }
  }
  if (control != nullptr) {
    changed = __reduce_add_sync(0xffffffffu, changed);
    if (lane == 0 && changed > 0) atomicAdd(&control[0], changed);
  }
}

// labels[h][i] = argmax_c points(h, i) . normalized[h][c]. grid: (ceil(n / AssignShape<kD>::kRows), heads);
// block kAssignThreads; dynamic shared memory AssignSharedBytes<kD>().
// With control: labels that differ from the previous contents are counted into control[0]. With counts: the
// update's histogram, counts[h][label] += 1 per point (counts zero before).
template <int kD>
static __global__ void __launch_bounds__(kAssignThreads)
    AssignKernel(PointsView pts, const bf16* normalized, int32_t C, int32_t* labels, int32_t* counts,
                 int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;  // uniform over the CTA
  using Shape = AssignShape<kD>;
  constexpr int kStride = Shape::kStride, kM = Shape::kMTiles, kK = kD / 16;
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* ps = reinterpret_cast<bf16*>(smem);
  bf16* cs = ps + Shape::kRows * kStride;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int t = lane & 3;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * Shape::kRows;
  const bf16* cent = normalized + static_cast<int64_t>(h) * C * kD;
  const int tiles = CeilDiv(C, kAssignTileCols);

  // One commit group per tile (empty past the last), so the wait counts below hold at the tail too.
  auto load_tile = [&](int tile) {
    if (tile < tiles) {
      bf16* dst = cs + (tile % kAssignStages) * kAssignTileCols * kStride;
      const int c0 = tile * kAssignTileCols;
      for (int i = tid; i < kAssignTileCols * kChunks; i += kAssignThreads) {
        const int r = i / kChunks, c = i % kChunks;
        const bool in = c0 + r < C;  // rows past C are zero-filled
        CpAsync16(dst + r * kStride + c * 8, cent + static_cast<int64_t>(in ? c0 + r : 0) * kD + c * 8, in ? 16 : 0);
      }
    }
    CpAsyncCommit();
  };
  for (int i = tid; i < Shape::kRows * kChunks; i += kAssignThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool in = p0 + r < pts.n;
    CpAsync16(ps + r * kStride + c * 8, pts.Point(h, in ? p0 + r : 0) + c * 8, in ? 16 : 0);
  }
  CpAsyncCommit();
#pragma unroll
  for (int st = 0; st < kAssignStages - 1; ++st) load_tile(st);
  CpAsyncWait<kAssignStages - 1>();  // the points' group
  __syncthreads();

  // A fragments (ldmatrix x4: rows 0-7 / 8-15 of the m-tile, k 0-7 / 8-15 of the k-step).
  uint32_t a[kM][kK][4];
  const int warp_row = warp * 16 * kM;
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int kk = 0; kk < kK; ++kk) {
      LdMatrixX4(a[m][kk],
                 ps + (warp_row + m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + kk * 16 + (lane >> 4) * 8);
    }
  }

  float best[kM][2];
  int idx[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) best[m][0] = best[m][1] = -INFINITY, idx[m][0] = idx[m][1] = 0;
  // B fragments: ldmatrix x4 over n-tiles (2j, 2j + 1) of a 32-column half, k 0-7 / 8-15 of the k-step.
  const int b_row = ((lane >> 4) * 8 + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;
  for (int tile = 0; tile < tiles; ++tile) {
    CpAsyncWait<kAssignStages - 2>();
    __syncthreads();  // tile's data visible; the stage refilled next was read by every warp in the last round
    load_tile(tile + kAssignStages - 1);
    const bf16* cb = cs + (tile % kAssignStages) * kAssignTileCols * kStride;
    const int c0 = tile * kAssignTileCols;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float s[kM][4][4];
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kK; ++kk) {
        uint32_t b[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) LdMatrixX4(b[j], cb + (half * 32 + j * 16) * kStride + b_row + kk * 16);
#pragma unroll
        for (int m = 0; m < kM; ++m) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            MmaBf16(s[m][2 * j], a[m][kk], b[j][0], b[j][1]);
            MmaBf16(s[m][2 * j + 1], a[m][kk], b[j][2], b[j][3]);
          }
        }
      }
      // Columns are visited in increasing order per thread, so a strict > keeps the first (lowest) maximum. A
      // half with every column < C takes its row maxima first and searches them only when they beat the best so
      // far (rare after the first tiles): the epilogue would otherwise cost as many instructions as the MMAs.
      const int col0 = c0 + half * 32 + 2 * t;
      if (c0 + half * 32 + 32 <= C) {
#pragma unroll
        for (int m = 0; m < kM; ++m) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float mx = s[m][0][2 * r];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(s[m][nt][2 * r], s[m][nt][2 * r + 1]));
            if (mx > best[m][r]) {
              best[m][r] = mx;
#pragma unroll
              for (int nt = 3; nt >= 0; --nt) {  // descending, so the lowest column equal to the maximum wins
                if (s[m][nt][2 * r + 1] == mx) idx[m][r] = col0 + nt * 8 + 1;
                if (s[m][nt][2 * r] == mx) idx[m][r] = col0 + nt * 8;
              }
            }
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = col0 + nt * 8 + e;
            if (col < C) {
#pragma unroll
              for (int m = 0; m < kM; ++m) {
                if (s[m][nt][e] > best[m][0]) best[m][0] = s[m][nt][e], idx[m][0] = col;
                if (s[m][nt][2 + e] > best[m][1]) best[m][1] = s[m][nt][2 + e], idx[m][1] = col;
              }
            }
          }
        }
      }
    }
  }
  int64_t rows[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) rows[m] = p0 + warp_row + m * 16;
  StoreLabels<kM>(pts, h, C, rows, best, idx, labels, counts, control);
  GridDependentsLaunch();
}

// The assignment on Hopper (sm_90a; AssignKernel elsewhere): the same contract, on wgmma. A CTA of two warpgroups
// takes 256 points (each warpgroup two 64-point m-tiles) kept in shared memory, and streams the centroids through
// kAssignStages 64-column tiles filled by cp.async; both operands are K-major with the 128-byte swizzle (wgmma.cuh).
// Per tile each warpgroup issues kD / 16 MMAs of m64n64k16 per m-tile, one commit group per m-tile, and takes the
// first m-tile's row maxima (as AssignKernel does: the same fragment layout per 8-column n-tile) while the second's
// run. Measured against alternatives on an H100 (docs/gpu.md): A from registers with four warpgroups of one m-tile
// each was slower (380 against 440 TFLOP/s at C 1024), three stages no faster than two.
constexpr int kWgAssignGroups = 2;  // warpgroups per CTA
constexpr int kWgAssignThreads = 128 * kWgAssignGroups;
constexpr int kWgAssignMTiles = 2;                                     // 64-point m-tiles per warpgroup
constexpr int kWgAssignRows = kWgAssignGroups * kWgAssignMTiles * 64;  // points per CTA

template <int kD>
constexpr size_t WgAssignSharedBytes() {  // + 1 KB to align the operand blocks to 1024 bytes
  return 1024 + static_cast<size_t>(kWgAssignRows + kAssignStages * kAssignTileCols) * kD * sizeof(bf16);
}

// grid: (ceil(n / kWgAssignRows), heads); block kWgAssignThreads; dynamic shared memory WgAssignSharedBytes<kD>().
template <int kD>
static __global__ void __launch_bounds__(kWgAssignThreads)
    AssignWgmmaKernel(PointsView pts, const bf16* normalized, int32_t C, int32_t* labels, int32_t* counts,
                      int32_t* control) {
#if LIVEKV_HAS_WGMMA
  KMeansKernelStart();
  if (KMeansStopped(control)) return;                     // uniform over the CTA
  constexpr int kBlocks = kD / 64;                        // 128-byte column blocks per row
  constexpr int kChunks = kD / 8;                         // 16-byte chunks per row
  constexpr uint32_t kPointBlock = kWgAssignRows * 128;   // bytes of one column block of the points
  constexpr uint32_t kTileBlock = kAssignTileCols * 128;  // ... of one centroid tile
  constexpr uint32_t kTileBytes = kBlocks * kTileBlock;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (SharedAddress(smem_raw) & 1023)) & 1023);
  unsigned char* ps = smem;
  unsigned char* cs = smem + kBlocks * kPointBlock;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = WarpgroupIndex(), wq = warp & 3;  // warpgroup, warp within it
  const int t = lane & 3;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kWgAssignRows;
  const bf16* cent = normalized + static_cast<int64_t>(h) * C * kD;
  const int tiles = CeilDiv(C, kAssignTileCols);

  // This thread's part of a centroid tile: chunk cc of rows r0 + j * kRowStep. kRowStep is a multiple of 8, so the
  // rows share one swizzle and lie kRowStep * 128 bytes apart: the addresses are computed once, not per tile.
  constexpr int kRowStep = kWgAssignThreads / kChunks;
  static_assert(kRowStep % 8 == 0 && kAssignTileCols % kRowStep == 0, "whole swizzle groups per copy round");
  const int r0 = tid / kChunks, cc = tid % kChunks;
  const uint32_t tile_dst = (cc / 8) * kTileBlock + Swizzle128(r0, cc % 8);
  auto load_tile = [&](int tile) {
    if (tile < tiles) {
      unsigned char* dst = cs + (tile % kAssignStages) * kTileBytes + tile_dst;
      const int c0 = tile * kAssignTileCols;
      const bf16* src = cent + static_cast<int64_t>(c0 + r0) * kD + cc * 8;
#pragma unroll
      for (int j = 0; j < kAssignTileCols / kRowStep; ++j) {
        const bool in = c0 + r0 + j * kRowStep < C;  // rows past C are zero-filled
        CpAsync16(dst + j * kRowStep * 128, in ? src + j * kRowStep * kD : cent, in ? 16 : 0);
      }
    }
    CpAsyncCommit();
  };
  for (int i = tid; i < kWgAssignRows * kChunks; i += kWgAssignThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool in = p0 + r < pts.n;
    CpAsync16(ps + (c / 8) * kPointBlock + Swizzle128(r, c % 8), pts.Point(h, in ? p0 + r : 0) + c * 8, in ? 16 : 0);
  }
  CpAsyncCommit();
#pragma unroll
  for (int st = 0; st < kAssignStages - 1; ++st) load_tile(st);

  const uint32_t ps_addr = SharedAddress(ps), cs_addr = SharedAddress(cs);
  float best[kWgAssignMTiles][2];
  int idx[kWgAssignMTiles][2];
#pragma unroll
  for (int m = 0; m < kWgAssignMTiles; ++m) best[m][0] = best[m][1] = -INFINITY, idx[m][0] = idx[m][1] = 0;
  for (int tile = 0; tile < tiles; ++tile) {
    CpAsyncWait<kAssignStages - 2>();  // this tile's group (and the points' before it)
    FenceProxyAsync();
    __syncthreads();  // the tile is visible to the MMAs; the stage refilled next was read by every warpgroup
    load_tile(tile + kAssignStages - 1);
    const uint32_t cb = cs_addr + (tile % kAssignStages) * kTileBytes;
    float s[kWgAssignMTiles][32];
    WgmmaFence();
#pragma unroll
    for (int m = 0; m < kWgAssignMTiles; ++m) {  // one commit group per m-tile
      const uint32_t rows = ps_addr + (group * kWgAssignMTiles + m) * 64 * 128;
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const uint32_t koff = (kk / 4) * kPointBlock + (kk % 4) * 32;
        WgmmaM64N64K16(s[m], WgmmaDescriptor(rows + koff), WgmmaDescriptor(cb + (kk / 4) * kTileBlock + (kk % 4) * 32),
                       kk > 0);
      }
      WgmmaCommit();
    }
    // As in AssignKernel: columns in increasing order per thread, a strict > keeps the lowest maximum. The first
    // m-tile's maxima are taken while the second's MMAs run.
    const int c0 = tile * kAssignTileCols;
    const int col0 = c0 + 2 * t;
    const bool whole = c0 + kAssignTileCols <= C;
    auto take = [&](int m) {
      if (whole) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = s[m][2 * r];
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[m][4 * nt + 2 * r], s[m][4 * nt + 2 * r + 1]));
          if (mx > best[m][r]) {
            best[m][r] = mx;
#pragma unroll
            for (int nt = 7; nt >= 0; --nt) {  // descending, so the lowest column equal to the maximum wins
              if (s[m][4 * nt + 2 * r + 1] == mx) idx[m][r] = col0 + nt * 8 + 1;
              if (s[m][4 * nt + 2 * r] == mx) idx[m][r] = col0 + nt * 8;
            }
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = col0 + nt * 8 + e;
            if (col < C) {
              if (s[m][4 * nt + e] > best[m][0]) best[m][0] = s[m][4 * nt + e], idx[m][0] = col;
              if (s[m][4 * nt + 2 + e] > best[m][1]) best[m][1] = s[m][4 * nt + 2 + e], idx[m][1] = col;
            }
          }
        }
      }
    };
    static_assert(kWgAssignMTiles == 2, "two commit groups");
    WgmmaWait<1>();
    WgmmaFenceOperands(s[0]);
    take(0);
    WgmmaWait<0>();
    WgmmaFenceOperands(s[1]);
    take(1);
  }
  int64_t rows[kWgAssignMTiles];
#pragma unroll
  for (int m = 0; m < kWgAssignMTiles; ++m) rows[m] = p0 + (group * kWgAssignMTiles + m) * 64 + wq * 16;
  StoreLabels<kWgAssignMTiles>(pts, h, C, rows, best, idx, labels, counts, control);
  GridDependentsLaunch();
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

// After an assignment: stop when it changed at most `threshold` labels; reset the count. One thread.
static __global__ void KMeansCheckKernel(int32_t* control, int64_t threshold) {
  KMeansKernelStart();
  if (control[1] == 0 && control[0] <= threshold) control[1] = 1;
  control[0] = 0;
}

// The update is a counting sort of the points by label followed by one warp per cluster summing its members (no
// fp32 atomics: they serialised on the popular clusters' addresses, ~90 us per 8 x 32k points):
//   HistogramKernel  counts[h][c] = |{i : labels[h][i] = c}|        (int atomics, one per point; or AssignKernel)
//   ScanKernel       cursor[h][c] = counts[h][0] + ... + counts[h][c - 1]
//   ScatterKernel    order[h][cursor[h][labels[h][i]]++] = i        (cursor[h][c] becomes the end of cluster c;
//                    ScatterRankedKernel for up to 512 clusters: one global atomic per (CTA, label))
//   MeanKernel       centroid = mean of the members (fp32), its normalised bf16 copy for the next assignment
// Within a cluster the order of `order` (hence of the fp32 sum) is nondeterministic.

// counts[h][labels[h][i]] += 1; counts zeroed by the caller. grid: (blocks, heads), grid-strided over the points.
static __global__ void HistogramKernel(const int32_t* labels, int32_t n, int32_t C, int32_t* counts,
                                       const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  const int h = blockIdx.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    atomicAdd(&counts[static_cast<int64_t>(h) * C + labels[static_cast<int64_t>(h) * n + i]], 1);
  }
}

constexpr int kScanThreads = 1024;

// cursor[h][c] = exclusive prefix sum of counts[h][:]. grid: heads; block kScanThreads.
static __global__ void __launch_bounds__(kScanThreads)
    ScanKernel(const int32_t* counts, int32_t C, int32_t* cursor, const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  __shared__ int32_t warp_total[kScanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * C;
  int32_t carry = 0;
  for (int32_t c0 = 0; c0 < C; c0 += kScanThreads) {
    const int32_t c = c0 + threadIdx.x;
    const int32_t v = c < C ? counts[base + c] : 0;
    int32_t incl = v;  // inclusive scan within the warp
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int32_t u = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += u;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int32_t w = warp_total[lane];  // kScanThreads / 32 == 32 warps
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int32_t u = __shfl_up_sync(0xffffffffu, w, off);
        if (lane >= off) w += u;
      }
      warp_total[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    const int32_t before = warp > 0 ? warp_total[warp - 1] : 0;
    if (c < C) cursor[base + c] = carry + before + incl - v;
    carry += warp_total[kScanThreads / 32 - 1];
    __syncthreads();  // warp_total is rewritten by the next chunk
  }
}

// order[h][cursor[h][l]++] = i for l = labels[h][i]. grid: (blocks, heads), grid-strided over the points.
static __global__ void ScatterKernel(const int32_t* labels, int32_t n, int32_t C, int32_t* cursor, int32_t* order,
                                     const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  const int h = blockIdx.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t pos = atomicAdd(&cursor[static_cast<int64_t>(h) * C + labels[static_cast<int64_t>(h) * n + i]], 1);
    order[static_cast<int64_t>(h) * n + pos] = static_cast<int32_t>(i);
  }
}

// The same scatter with far fewer global atomics: a CTA ranks its kScatterPoints points per label in shared memory
// (s_count, int atomics there), reserves each label's run of `order` with one global atomicAdd per label it holds,
// then writes. Used while a CTA's points average at least 4 per label (C <= kScatterRankedMaxClusters): H100, 8 x
// 32k points, the k-means round at C 400 5 % faster (update 64 -> 57 us), at C 1024 slower than ScatterKernel (128
// CTAs each reserving ~900 labels). Dynamic shared memory 2 C int32. grid: (ceil(n / kScatterPoints), heads); block
// kScatterThreads.
constexpr int kScatterThreads = 256;
constexpr int kScatterPerThread = 8;
constexpr int kScatterPoints = kScatterThreads * kScatterPerThread;
constexpr int kScatterRankedMaxClusters = kScatterPoints / 4;
static __global__ void __launch_bounds__(kScatterThreads)
    ScatterRankedKernel(const int32_t* labels, int32_t n, int32_t C, int32_t* cursor, int32_t* order,
                        const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  extern __shared__ int32_t s_scatter[];
  int32_t* s_count = s_scatter;  // [C]: this CTA's points per label, then (s_base) where its run of label c starts
  int32_t* s_base = s_scatter + C;
  const int h = blockIdx.y;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s_count[c] = 0;
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kScatterPoints;
  int32_t label[kScatterPerThread], rank[kScatterPerThread];
#pragma unroll
  for (int u = 0; u < kScatterPerThread; ++u) {
    const int64_t i = first + u * kScatterThreads + threadIdx.x;
    label[u] = i < n ? labels[static_cast<int64_t>(h) * n + i] : -1;
    rank[u] = label[u] >= 0 ? atomicAdd(&s_count[label[u]], 1) : 0;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int32_t k = s_count[c];
    if (k > 0) s_base[c] = atomicAdd(&cursor[static_cast<int64_t>(h) * C + c], k);
  }
  __syncthreads();
#pragma unroll
  for (int u = 0; u < kScatterPerThread; ++u) {
    if (label[u] < 0) continue;
    order[static_cast<int64_t>(h) * n + s_base[label[u]] + rank[u]] =
        static_cast<int32_t>(first + u * kScatterThreads + threadIdx.x);
  }
}

// kN consecutive bf16 (kN = 2, 4 or 8: one 4-, 8- or 16-byte load) as floats.
template <int kN>
__device__ __forceinline__ void LoadBf16Row(const bf16* p, float (&out)[kN]) {
  static_assert(kN == 2 || kN == 4 || kN == 8, "2, 4 or 8 elements");
  if constexpr (kN == 2) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    out[0] = f.x, out[1] = f.y;
  } else if constexpr (kN == 4) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r.y));
    out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
  } else {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
}

constexpr int kMeanWarps = 8;

// One warp per (head, cluster) row r: its members are order[h][ends[r] - counts[r] .. ends[r]). centroids[r] = their
// fp32 mean (unchanged when empty); normalized[r] = centroids[r] / ||centroids[r]|| in bf16 (zero stays zero);
// sizes[r] = counts[r] when sizes is not null; counts[r] = 0 after (ready for the next assignment's histogram). Lane l
// owns columns kD / 32 * l ... grid: ceil(rows / kMeanWarps); block 32 * kMeanWarps.
template <int kD>
static __global__ void __launch_bounds__(32 * kMeanWarps)
    MeanKernel(PointsView pts, const int32_t* order, int32_t* counts, const int32_t* ends, int32_t C, float* centroids,
               bf16* normalized, int32_t* sizes, const int32_t* control) {
  KMeansKernelStart();
  if (KMeansStopped(control)) return;
  constexpr int kN = kD / 32;
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kMeanWarps + (threadIdx.x >> 5);
  if (r >= static_cast<int64_t>(pts.heads) * C) return;
  const int h = static_cast<int>(r / C);
  const int32_t count = counts[r], end = ends[r];
  const int32_t* members = order + static_cast<int64_t>(h) * pts.n;
  float acc[kN] = {};
  for (int32_t j0 = end - count; j0 < end; j0 += 32) {
    const int m = min(32, end - j0);
    const int32_t mine = lane < m ? members[j0 + lane] : 0;
    int j = 0;
    for (; j + 8 <= m; j += 8) {  // eight member rows in flight per warp
      float x[8][kN];
#pragma unroll
      for (int u = 0; u < 8; ++u)
        LoadBf16Row<kN>(pts.Point(h, __shfl_sync(0xffffffffu, mine, j + u)) + lane * kN, x[u]);
#pragma unroll
      for (int u = 0; u < 8; ++u)
#pragma unroll
        for (int e = 0; e < kN; ++e) acc[e] += x[u][e];
    }
    for (; j < m; ++j) {
      float x[kN];
      LoadBf16Row<kN>(pts.Point(h, __shfl_sync(0xffffffffu, mine, j)) + lane * kN, x);
#pragma unroll
      for (int e = 0; e < kN; ++e) acc[e] += x[e];
    }
  }
  float* crow = centroids + r * kD + lane * kN;
  float ss = 0.0f;
  if (count > 0) {
    const float inv = 1.0f / static_cast<float>(count);
#pragma unroll
    for (int e = 0; e < kN; ++e) acc[e] *= inv, crow[e] = acc[e], ss += acc[e] * acc[e];
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) acc[e] = crow[e], ss += acc[e] * acc[e];
  }
  ss = WarpSum(ss);
  const float inv_norm = ss > 0.0f ? rsqrtf(ss) : 0.0f;
  bf16* nrow = normalized + r * kD + lane * kN;
#pragma unroll
  for (int e = 0; e < kN; e += 2) {
    *reinterpret_cast<uint32_t*>(nrow + e) = PackBf16x2(acc[e] * inv_norm, acc[e + 1] * inv_norm);
  }
  if (lane == 0) {
    if (sizes != nullptr) sizes[r] = count;
    counts[r] = 0;
  }
  GridDependentsLaunch();
}

// centroids[h][c][:] = float(point(h, rows[h][c])). One warp per centroid.
static __global__ void GatherPointsKernel(PointsView pts, const int32_t* rows, int32_t C, float* centroids) {
  KMeansKernelStart();
  const int64_t id = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (id >= static_cast<int64_t>(pts.heads) * C) return;
  const int h = static_cast<int>(id / C);
  const bf16* p = pts.Point(h, rows[id]);
  for (int d = lane; d < pts.dim; d += 32) centroids[id * pts.dim + d] = ToFloat(p[d]);
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_KMEANS_CUH_
