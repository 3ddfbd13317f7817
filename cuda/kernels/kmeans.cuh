// File: cuda/kernels/kmeans.cuh
//
// Spherical Lloyd k-means over the keys of many KV heads at once (ClusterKV's clustering, kvcache/kmeans.h's
// contract without its re-seeding): assignment = argmax over centroids of the point's dot product with the
// L2-normalised centroid (= argmax of cosine; ties to the lower index), update = plain fp32 mean of the raw member
// points, an empty cluster keeping its centroid. C is unbounded (centroid tiles are streamed).
//
// Assignment runs on bf16 tensor cores: the points are bf16 already and the normalised centroids are rounded to
// bf16, so a score may move by up to 2^-9 |p| and near-ties may resolve differently than in fp32 (the tests check
// near-optimality, not bit equality, for that reason).
#ifndef LIVEKV_CUDA_KERNELS_KMEANS_CUH_
#define LIVEKV_CUDA_KERNELS_KMEANS_CUH_

#include "cuda/kernels/common.cuh"

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
  __device__ __forceinline__ const bf16* Point(int h, int64_t i) const { return data + h * head_stride + i * row_stride; }
};

// Early stop (KMeansRun with a stop fraction): control = {labels changed by the last assignment, stop}. Every
// kernel of an iteration returns at once when control[1] is set (the launches stay, the work goes); control may be
// null (no early stop).
__device__ __forceinline__ bool KMeansStopped(const int32_t* control) { return control != nullptr && control[1] != 0; }

// out[r] = c[r] / ||c[r]|| (a zero row stays zero), rows of `dim` fp32 -> bf16. One warp per row.
static __global__ void NormalizeRowsKernel(const float* c, bf16* out, int64_t rows, int dim, const int32_t* control) {
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

constexpr int kAssignRows = 64;     // points per CTA
constexpr int kAssignCols = 64;     // centroids per tile
constexpr int kAssignThreads = 128;

template <int kD>
constexpr size_t AssignSharedBytes() {
  return 2 * static_cast<size_t>(kAssignRows) * (kD + 8) * sizeof(bf16);
}

// labels[h][i] = argmax_c points(h, i) . normalized[h][c]. grid: (ceil(n / 64), heads); block 128;
// dynamic shared memory AssignSharedBytes<kD>().
// With control: labels that differ from the previous contents are counted into control[0].
template <int kD>
static __global__ void __launch_bounds__(kAssignThreads) AssignKernel(PointsView pts, const bf16* normalized, int32_t C,
                                                               int32_t* labels, int32_t* control) {
  if (KMeansStopped(control)) return;  // uniform over the CTA
  constexpr int kStride = kD + 8;
  constexpr int kChunks = kD / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* ps = reinterpret_cast<bf16*>(smem);
  bf16* cs = ps + kAssignRows * kStride;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kAssignRows;

  for (int i = tid; i < kAssignRows * kChunks; i += kAssignThreads) {
    const int r = i / kChunks, c = i % kChunks;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (p0 + r < pts.n) val = *reinterpret_cast<const uint4*>(pts.Point(h, p0 + r) + c * 8);
    *reinterpret_cast<uint4*>(ps + r * kStride + c * 8) = val;
  }
  float best_a = -INFINITY, best_b = -INFINITY;
  int idx_a = 0, idx_b = 0;
  const bf16* cent = normalized + static_cast<int64_t>(h) * C * kD;
  for (int c0 = 0; c0 < C; c0 += kAssignCols) {
    __syncthreads();
    for (int i = tid; i < kAssignCols * kChunks; i += kAssignThreads) {
      const int r = i / kChunks, c = i % kChunks;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (c0 + r < C) val = *reinterpret_cast<const uint4*>(cent + static_cast<int64_t>(c0 + r) * kD + c * 8);
      *reinterpret_cast<uint4*>(cs + r * kStride + c * 8) = val;
    }
    __syncthreads();
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      const bf16* pa = ps + (warp * 16 + g) * kStride + kk * 16 + 2 * t;
      a[0] = LoadU32(pa);
      a[1] = LoadU32(pa + 8 * kStride);
      a[2] = LoadU32(pa + 8);
      a[3] = LoadU32(pa + 8 * kStride + 8);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const bf16* cb = cs + (nt * 8 + g) * kStride + kk * 16 + 2 * t;
        MmaBf16(s[nt], a, LoadU32(cb), LoadU32(cb + 8));
      }
    }
    // Columns are visited in increasing order per thread, so a strict > keeps the first (lowest) maximum.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = c0 + nt * 8 + 2 * t + e;
        if (col < C) {
          if (s[nt][e] > best_a) best_a = s[nt][e], idx_a = col;
          if (s[nt][2 + e] > best_b) best_b = s[nt][2 + e], idx_b = col;
        }
      }
    }
  }
#pragma unroll
  for (int off = 1; off <= 2; off *= 2) {
    const float va = __shfl_xor_sync(0xffffffffu, best_a, off), vb = __shfl_xor_sync(0xffffffffu, best_b, off);
    const int ia = __shfl_xor_sync(0xffffffffu, idx_a, off), ib = __shfl_xor_sync(0xffffffffu, idx_b, off);
    if (va > best_a || (va == best_a && ia < idx_a)) best_a = va, idx_a = ia;
    if (vb > best_b || (vb == best_b && ib < idx_b)) best_b = vb, idx_b = ib;
  }
  int changed = 0;
  if (t == 0) {
    const int64_t ra = p0 + warp * 16 + g, rb = ra + 8;
    int32_t* la = labels + static_cast<int64_t>(h) * pts.n + ra;
    if (ra < pts.n) {
      if (control != nullptr) changed += la[0] != idx_a;
      la[0] = idx_a;
    }
    if (rb < pts.n) {
      if (control != nullptr) changed += la[8] != idx_b;
      la[8] = idx_b;
    }
  }
  if (control != nullptr) {
    changed = __reduce_add_sync(0xffffffffu, changed);
    if (lane == 0 && changed > 0) atomicAdd(&control[0], changed);
  }
}

// After an assignment: stop when it changed at most `threshold` labels; reset the count. One thread.
static __global__ void KMeansCheckKernel(int32_t* control, int64_t threshold) {
  if (control[1] == 0 && control[0] <= threshold) control[1] = 1;
  control[0] = 0;
}

// sums[h][label][:] += point, counts[h][label] += 1 (fp32 / int32 atomics); sums may be null (counts only).
// grid: (blocks, heads); block 256 (a warp per point, grid-strided).
static __global__ void AccumulateKernel(PointsView pts, const int32_t* labels, int32_t C, float* sums, int32_t* counts,
                                        const int32_t* control) {
  if (KMeansStopped(control)) return;
  const int h = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; i < pts.n; i += warps) {
    const int32_t c = labels[static_cast<int64_t>(h) * pts.n + i];
    if (lane == 0) atomicAdd(&counts[static_cast<int64_t>(h) * C + c], 1);
    if (sums != nullptr) {
      const bf16* p = pts.Point(h, i);
      float* s = sums + (static_cast<int64_t>(h) * C + c) * pts.dim;
      for (int d = lane; d < pts.dim; d += 32) atomicAdd(&s[d], ToFloat(p[d]));
    }
  }
}

// centroids = sums / counts where counts > 0 (empty clusters keep their centroid). Grid-strided over heads*C*dim.
static __global__ void DivideKernel(const float* sums, const int32_t* counts, int64_t rows, int dim, float* centroids,
                                    const int32_t* control) {
  if (KMeansStopped(control)) return;
  const int64_t total = rows * dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t n = counts[i / dim];
    if (n > 0) centroids[i] = sums[i] / static_cast<float>(n);
  }
}

// centroids[h][c][:] = float(point(h, rows[h][c])). One warp per centroid.
static __global__ void GatherPointsKernel(PointsView pts, const int32_t* rows, int32_t C, float* centroids) {
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
