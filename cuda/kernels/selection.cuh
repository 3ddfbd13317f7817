// File: cuda/kernels/selection.cuh
//
// Per-KV-head block selection for recall (kvcache/selection.h on the GPU):
//   ScoreKernel   raw[h][i][b] for each query vector i of the head's group (rows x group) and block b: the dot
//                 product with a centroid (ClusterKV) or Quest's bound sum_d max(q_d hi_d, q_d lo_d);
//   RowStatsKernel / PoolKernel  pool the raw scores over the queries: mean of raw scores, or mean of the
//                 per-query softmax over blocks (scale 1/sqrt(d)) — the same formula as the CPU's Pool;
//   SelectKernel  per head: sort blocks by pooled score (descending, ties to the lower index; a bitonic sort of
//                 (score, index) keys, in shared memory up to kSelectSmemKeys blocks, else in a global workspace)
//                 then take them greedily while they fit the token budget (a skipped block does not stop smaller
//                 ones after it), returning the chosen indices in ascending order — SelectGreedy's contract.
#ifndef LIVEKV_CUDA_KERNELS_SELECTION_CUH_
#define LIVEKV_CUDA_KERNELS_SELECTION_CUH_

#include "cuda/kernels/common.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kScoreQueries = 32;  // query vectors staged in shared memory at a time
constexpr int kScoreMaxDim = 256;
constexpr int kSelectThreads = 1024;
constexpr int kSelectSmemKeys = 8192;

struct ScoreParams {
  const bf16* q;         // query vector (row r, group head j) of KV head h at q + r * row_stride + (h * group + j) * d
  int64_t row_stride;    // elements between rows (num_q_heads * d)
  int32_t rows, group, heads, d;
  const float* a;        // centroids, or Quest's per-channel max keys hi: [heads][blocks][d]
  const float* b;        // Quest's lo: [heads][blocks][d]; null for centroids
  int32_t blocks;
  float* raw;            // [heads][rows * group][blocks]
};

// grid: (ceil(blocks / 8), heads); block: 256 (a warp per block).
template <bool kQuest>
static __global__ void ScoreKernel(ScoreParams p) {
  __shared__ float qs[kScoreQueries][kScoreMaxDim];
  const int h = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int blk = blockIdx.x * 8 + warp;
  const bool active = blk < p.blocks;
  constexpr int kPer = kScoreMaxDim / 32;
  float ca[kPer], cb[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = lane + 32 * k;
    const bool in = active && d < p.d;
    const int64_t off = (static_cast<int64_t>(h) * p.blocks + blk) * p.d + d;
    ca[k] = in ? p.a[off] : 0.0f;
    cb[k] = (kQuest && in) ? p.b[off] : 0.0f;
  }
  const int nq = p.rows * p.group;
  for (int q0 = 0; q0 < nq; q0 += kScoreQueries) {
    const int count = min(kScoreQueries, nq - q0);
    __syncthreads();
    for (int i = threadIdx.x; i < count * p.d; i += blockDim.x) {
      const int qi = q0 + i / p.d, d = i % p.d;
      const int r = qi / p.group, j = qi % p.group;
      qs[i / p.d][d] = ToFloat(p.q[r * p.row_stride + (static_cast<int64_t>(h) * p.group + j) * p.d + d]);
    }
    __syncthreads();
    if (!active) continue;
    for (int i = 0; i < count; ++i) {
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int d = lane + 32 * k;
        if (d < p.d) {
          const float qv = qs[i][d];
          s += kQuest ? fmaxf(qv * ca[k], qv * cb[k]) : qv * ca[k];
        }
      }
      s = WarpSum(s);
      if (lane == 0) p.raw[(static_cast<int64_t>(h) * nq + q0 + i) * p.blocks + blk] = s;
    }
  }
}

// stats[h][i] = (max_b raw, sum_b exp((raw - max) * scale)). grid: (queries, heads); block 256.
static __global__ void RowStatsKernel(const float* raw, int32_t queries, int32_t blocks, float scale, float* stats) {
  __shared__ float scratch[32];
  const int64_t row = static_cast<int64_t>(blockIdx.y) * queries + blockIdx.x;
  const float* r = raw + row * blocks;
  float mx = -INFINITY;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) mx = fmaxf(mx, r[b]);
  mx = BlockMax(mx, scratch);
  float sum = 0.0f;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) sum += expf((r[b] - mx) * scale);
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) {
    stats[row * 2] = mx;
    stats[row * 2 + 1] = sum;
  }
}

// pooled[h][b] = mean over queries of raw (stats == null) or of exp((raw - max) * scale) / sum.
// grid: (ceil(blocks / 256), heads); block 256.
static __global__ void PoolKernel(const float* raw, const float* stats, int32_t queries, int32_t blocks, float scale,
                           float* pooled) {
  const int h = blockIdx.y;
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  const float inv_q = 1.0f / static_cast<float>(queries);
  float acc = 0.0f;
  for (int i = 0; i < queries; ++i) {
    const int64_t row = static_cast<int64_t>(h) * queries + i;
    const float v = raw[row * blocks + b];
    if (stats == nullptr) {
      acc += v * inv_q;
    } else {
      acc += expf((v - stats[row * 2]) * scale) * (inv_q / stats[row * 2 + 1]);
    }
  }
  pooled[static_cast<int64_t>(h) * blocks + b] = acc;
}

// Sortable key: larger score first, then lower index first (descending order of the key).
__device__ __forceinline__ uint64_t SelectKey(float score, int32_t index) {
  if (score == 0.0f) score = 0.0f;  // -0 == +0
  uint32_t u = __float_as_uint(score);
  u ^= (u & 0x80000000u) ? 0xffffffffu : 0x80000000u;
  return (static_cast<uint64_t>(u) << 32) | (0xffffffffu - static_cast<uint32_t>(index));
}

struct SelectParams {
  const float* pooled;     // [heads][blocks]
  const int32_t* sizes;    // [heads][blocks] tokens per block, >= 0
  int32_t blocks;
  int32_t pow2;            // smallest power of two >= blocks
  int64_t budget;          // tokens per head
  uint64_t* keys;          // [heads][pow2] global workspace, or null: shared memory
  uint8_t* flags;          // [heads][blocks] global workspace, or null: shared memory
  int32_t* chosen;         // [heads][blocks]: chosen indices ascending, then -1
  int32_t* count;          // [heads]
  int64_t* taken;          // [heads] tokens taken
};

// grid: heads; block: kSelectThreads. Dynamic shared memory: pow2 * 8 + blocks bytes when keys/flags are null.
static __global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t scan_scratch[32];
  __shared__ int64_t s_left;
  __shared__ int32_t s_min;
  const int h = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  uint64_t* keys = p.keys != nullptr ? p.keys + static_cast<int64_t>(h) * p.pow2 : reinterpret_cast<uint64_t*>(smem);
  uint8_t* flags = p.flags != nullptr ? p.flags + static_cast<int64_t>(h) * p.blocks
                                      : reinterpret_cast<uint8_t*>(smem) + static_cast<size_t>(p.pow2) * 8;
  const float* pooled = p.pooled + static_cast<int64_t>(h) * p.blocks;
  const int32_t* sizes = p.sizes + static_cast<int64_t>(h) * p.blocks;

  for (int i = tid; i < p.pow2; i += nt) keys[i] = i < p.blocks ? SelectKey(pooled[i], i) : 0ull;
  for (int i = tid; i < p.blocks; i += nt) flags[i] = 0;
  __syncthreads();
  // Bitonic sort, descending.
  for (int k = 2; k <= p.pow2; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = tid; i < p.pow2; i += nt) {
        const int ixj = i ^ j;
        if (ixj > i) {
          const uint64_t a = keys[i], b = keys[ixj];
          const bool descending = (i & k) == 0;
          if (descending ? a < b : a > b) {
            keys[i] = b;
            keys[ixj] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  // Phase 1: the longest prefix of the sorted order in which every block fits when reached (budget not yet
  // full). Each thread takes a contiguous segment of sorted positions.
  const int per = (p.blocks + nt - 1) / nt;
  const int lo = min(p.blocks, tid * per), hi = min(p.blocks, lo + per);
  int64_t local = 0;
  for (int j = lo; j < hi; ++j) local += sizes[0xffffffffu - static_cast<uint32_t>(keys[j])];
  int32_t smallest = INT32_MAX;
  for (int i = tid; i < p.blocks; i += nt) smallest = min(smallest, sizes[i]);
  if (tid == 0) s_min = INT32_MAX;
  int64_t total = 0;
  int64_t prefix = BlockExclusiveScan(local, scan_scratch, &total);  // (its barriers also publish s_min's init)
  atomicMin(&s_min, smallest);
  int64_t taken1 = 0, count1 = 0;
  for (int j = lo; j < hi; ++j) {
    const int32_t idx = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys[j]));
    const int64_t s = sizes[idx];
    if (p.budget > 0 && prefix < p.budget && prefix + s <= p.budget) {
      flags[idx] = 1;
      taken1 += s;
      ++count1;
    }
    prefix += s;
  }
  int64_t phase1_tokens = 0, cut = 0;
  (void)BlockExclusiveScan(taken1, scan_scratch, &phase1_tokens);
  (void)BlockExclusiveScan(count1, scan_scratch, &cut);  // barriers inside: flags and s_min are visible after it
  // Phase 2 (one thread): continue in sorted order from the first block that did not fit, as SelectGreedy does.
  if (tid == 0) {
    int64_t left = p.budget - phase1_tokens;
    for (int64_t j = cut; j < p.blocks; ++j) {
      if (left <= 0 || left < s_min) break;
      const int32_t idx = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys[j]));
      if (sizes[idx] <= left) {
        flags[idx] = 1;
        left -= sizes[idx];
      }
    }
    s_left = left;
  }
  __syncthreads();
  // Compaction in index order.
  int64_t mine = 0;
  for (int i = lo; i < hi; ++i) mine += flags[i];
  int64_t chosen_total = 0;
  int64_t out = BlockExclusiveScan(mine, scan_scratch, &chosen_total);
  int32_t* chosen = p.chosen + static_cast<int64_t>(h) * p.blocks;
  for (int i = lo; i < hi; ++i) {
    if (flags[i]) chosen[out++] = i;
  }
  for (int64_t i = chosen_total + tid; i < p.blocks; i += nt) chosen[i] = -1;
  if (tid == 0) {
    p.count[h] = static_cast<int32_t>(chosen_total);
    p.taken[h] = p.budget - s_left;
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_SELECTION_CUH_
