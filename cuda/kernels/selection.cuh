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
//   DecodeScoreKernel  ScoreKernel for one query row against centroids, with fewer, fuller CTAs;
//   PoolSelectKernel  RowStats + Pool + Select in one kernel, per head one CTA (up to 8 query vectors per head):
//                 after DecodeScoreKernel, a decode step's selection is two launches instead of four.
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

// Sorts keys[0, n) descending (n a power of two; every thread of the CTA calls it; keys visible to all before,
// sorted and visible after). Bitonic: the stages that pair elements 256 or more apart go through memory, one
// barrier each; the others run on chunks of 8 keys in registers, a warp's 32 chunks (256 keys) exchanging by
// shuffles, so a sort of 4096 keys takes 22 barriers instead of 78.
__device__ __forceinline__ void BitonicSortDescending(uint64_t* keys, int n) {
  const int tid = threadIdx.x, nt = blockDim.x;
  if (n < 256) {  // fewer than a warp's chunks: the plain pair loop
    for (int k = 2; k <= n; k <<= 1) {
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int t = tid; t < n / 2; t += nt) {
          const int i = 2 * t - (t & (j - 1));
          const uint64_t a = keys[i], b = keys[i + j];
          if ((i & k) == 0 ? a < b : a > b) keys[i] = b, keys[i + j] = a;
        }
        __syncthreads();
      }
    }
    return;
  }
  const int chunks = n / 8;  // a multiple of 32: chunk loops are warp-uniform
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j >= 256; j >>= 1) {
      for (int t = tid; t < n / 2; t += nt) {
        const int i = 2 * t - (t & (j - 1));
        const uint64_t a = keys[i], b = keys[i + j];
        if ((i & k) == 0 ? a < b : a > b) keys[i] = b, keys[i + j] = a;
      }
      __syncthreads();
    }
    for (int chunk = tid; chunk < chunks; chunk += nt) {
      uint64_t a[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) a[e] = keys[chunk * 8 + e];
      for (int j = min(k >> 1, 128); j >= 8; j >>= 1) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int i = chunk * 8 + e;
          const uint64_t other = __shfl_xor_sync(0xffffffffu, a[e], j >> 3);
          const bool keep_larger = ((i & k) == 0) == ((i & j) == 0);
          a[e] = keep_larger ? (a[e] > other ? a[e] : other) : (a[e] < other ? a[e] : other);
        }
      }
#pragma unroll
      for (int j = 4; j >= 1; j >>= 1) {
        if (j > (k >> 1)) continue;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          if (e & j) continue;
          const int i = chunk * 8 + e;
          const uint64_t lo = a[e], hi = a[e | j];
          if ((i & k) == 0 ? lo < hi : lo > hi) a[e] = hi, a[e | j] = lo;
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) keys[chunk * 8 + e] = a[e];
    }
    __syncthreads();
  }
}

// One head's greedy pick over `blocks` scores (a CTA's threads together): keys[0, pow2) hold SelectKey(score, i)
// for i < blocks and 0 after (written by the caller, visible to every thread), are sorted descending (bitonic),
// and the blocks taken while they fit `budget`; `flags` (blocks bytes) is scratch. Writes chosen (ascending, then
// -1), *count and *taken. Every thread of the CTA calls it.
__device__ __forceinline__ void SelectGreedyCta(const int32_t* sizes, int32_t blocks, int32_t pow2, int64_t budget,
                                                uint64_t* keys, uint8_t* flags, int32_t* chosen, int32_t* count,
                                                int64_t* taken) {
  __shared__ int64_t scan_scratch[32];
  __shared__ int64_t s_left;
  __shared__ int32_t s_min;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < blocks; i += nt) flags[i] = 0;
  __syncthreads();
  BitonicSortDescending(keys, pow2);
  // Phase 1: the longest prefix of the sorted order in which every block fits when reached (budget not yet
  // full). Each thread takes a contiguous segment of sorted positions.
  const int per = (blocks + nt - 1) / nt;
  const int lo = min(blocks, tid * per), hi = min(blocks, lo + per);
  int64_t local = 0;
  for (int j = lo; j < hi; ++j) local += sizes[0xffffffffu - static_cast<uint32_t>(keys[j])];
  int32_t smallest = INT32_MAX;
  for (int i = tid; i < blocks; i += nt) smallest = min(smallest, sizes[i]);
  if (tid == 0) s_min = INT32_MAX;
  int64_t total = 0;
  int64_t prefix = BlockExclusiveScan(local, scan_scratch, &total);  // (its barriers also publish s_min's init)
  atomicMin(&s_min, smallest);
  int64_t taken1 = 0, count1 = 0;
  for (int j = lo; j < hi; ++j) {
    const int32_t idx = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys[j]));
    const int64_t s = sizes[idx];
    if (budget > 0 && prefix < budget && prefix + s <= budget) {
      flags[idx] = 1;
      taken1 += s;
      ++count1;
    }
    prefix += s;
  }
  int64_t phase1_tokens = 0, cut = 0;
  (void)BlockExclusiveScan(taken1, scan_scratch, &phase1_tokens);
  (void)BlockExclusiveScan(count1, scan_scratch, &cut);  // barriers inside: flags and s_min are visible after it
  // Phase 2 (one warp): continue in sorted order from the first block that did not fit, as SelectGreedy does: a
  // block is taken when it fits what is left, until nothing is left or less than the smallest block. The warp
  // looks at 32 sorted blocks at a time and finds the next one that fits with a ballot; zero-size blocks before it
  // are taken with it (they fit while anything is left), so the serial steps are the nonzero blocks taken.
  if (tid < 32) {
    const int lane = tid;
    int64_t left = budget - phase1_tokens;
    bool done = false;
    for (int64_t base = cut; base < blocks && !done; base += 32) {
      if (left <= 0 || left < s_min) break;
      const int64_t j = base + lane;
      const bool valid = j < blocks;
      const int32_t idx = valid ? static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys[j])) : 0;
      const int32_t sz = valid ? sizes[idx] : INT32_MAX;
      int pos = 0;
      for (;;) {
        const unsigned fit = __ballot_sync(0xffffffffu, valid && lane >= pos && sz > 0 && sz <= left);
        const int p = fit != 0 ? __ffs(fit) - 1 : 32;
        if (valid && lane >= pos && lane < p && sz == 0) flags[idx] = 1;
        if (p == 32) break;
        if (lane == p) flags[idx] = 1;
        left -= __shfl_sync(0xffffffffu, sz, p);
        pos = p + 1;
        if (left <= 0 || left < s_min) {
          done = true;
          break;
        }
      }
    }
    if (lane == 0) s_left = left;
  }
  __syncthreads();
  // Compaction in index order.
  int64_t mine = 0;
  for (int i = lo; i < hi; ++i) mine += flags[i];
  int64_t chosen_total = 0;
  int64_t out = BlockExclusiveScan(mine, scan_scratch, &chosen_total);
  for (int i = lo; i < hi; ++i) {
    if (flags[i]) chosen[out++] = i;
  }
  for (int64_t i = chosen_total + tid; i < blocks; i += nt) chosen[i] = -1;
  if (tid == 0) {
    *count = static_cast<int32_t>(chosen_total);
    *taken = budget - s_left;
  }
}

// grid: heads; block: kSelectThreads. Dynamic shared memory: pow2 * 8 + blocks bytes when keys/flags are null.
static __global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int h = blockIdx.x;
  uint64_t* keys = p.keys != nullptr ? p.keys + static_cast<int64_t>(h) * p.pow2 : reinterpret_cast<uint64_t*>(smem);
  uint8_t* flags = p.flags != nullptr ? p.flags + static_cast<int64_t>(h) * p.blocks
                                      : reinterpret_cast<uint8_t*>(smem) + static_cast<size_t>(p.pow2) * 8;
  const float* pooled = p.pooled + static_cast<int64_t>(h) * p.blocks;
  for (int i = threadIdx.x; i < p.pow2; i += blockDim.x) keys[i] = i < p.blocks ? SelectKey(pooled[i], i) : 0ull;
  SelectGreedyCta(p.sizes + static_cast<int64_t>(h) * p.blocks, p.blocks, p.pow2, p.budget, keys, flags,
                  p.chosen + static_cast<int64_t>(h) * p.blocks, p.count + h, p.taken + h);
}

// ---- Decode scoring --------------------------------------------------------------------------------------------
// ScoreKernel for one query row against centroids with head_dim = 32 * kF4: each centroid is read by 8 lanes
// holding kF4 float4 (instruction k of the 8 lanes reads 128 contiguous bytes), a warp scores 4 centroids per
// round and a CTA of 8 warps DecodeScoreBlocks<kF4>() centroids, its rounds' loads in flight together. Fewer,
// fuller CTAs than ScoreKernel's 8 centroids per CTA (which also stages up to 32 query rows in shared memory).
template <int kF4>
__host__ __device__ constexpr int DecodeScoreRounds() {
  return kF4 >= 8 ? 2 : 4;
}
template <int kF4>
__host__ __device__ constexpr int DecodeScoreBlocks() {
  return DecodeScoreRounds<kF4>() * 32;
}
constexpr int kDecodeScoreThreads = 256;
constexpr int kDecodeScoreMaxGroup = 8;

// grid: (ceil(blocks / DecodeScoreBlocks<kF4>()), heads); block: kDecodeScoreThreads. raw: [heads][group][blocks].
template <int kF4>
static __global__ void __launch_bounds__(kDecodeScoreThreads) DecodeScoreKernel(const bf16* q, const float* centroids,
                                                                               int32_t group, int32_t blocks,
                                                                               float* raw) {
  constexpr int kD = kF4 * 32, kRounds = DecodeScoreRounds<kF4>();
  __shared__ __align__(16) float qs[kDecodeScoreMaxGroup * kD];
  const int h = blockIdx.y, G = group, C = blocks;
  for (int i = threadIdx.x; i < G * kD; i += blockDim.x) qs[i] = ToFloat(q[static_cast<int64_t>(h) * G * kD + i]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane >> 3, sl = lane & 7;
  const float* cent = centroids + static_cast<int64_t>(h) * C * kD;
  const int base = blockIdx.x * DecodeScoreBlocks<kF4>() + warp * 4 + sub;
  float4 v[kRounds][kF4];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int c = base + r * 32;
#pragma unroll
    for (int k = 0; k < kF4; ++k) {
      v[r][k] = c < C ? reinterpret_cast<const float4*>(cent + static_cast<int64_t>(c) * kD)[k * 8 + sl]
                      : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  __syncthreads();  // qs
  float* out = raw + static_cast<int64_t>(h) * G * C;
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int c = base + r * 32;
    for (int j = 0; j < G; ++j) {  // warp-uniform: the 8-lane sums use every lane
      const float4* qv = reinterpret_cast<const float4*>(qs + j * kD);
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < kF4; ++k) {
        const float4 a = qv[k * 8 + sl], b = v[r][k];
        acc += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      }
      acc = WarpSum<8>(acc);
      if (sl == 0 && c < C) out[static_cast<int64_t>(j) * C + c] = acc;
    }
  }
}

// ---- Pool and select in one kernel ---------------------------------------------------------------------------------
// RowStatsKernel + PoolKernel + SelectKernel for one query row of `queries` vectors per head (a decode step's
// selection after ScoreKernel): per head one CTA reads the raw scores (queries x blocks, from L2), pools them into
// the sort keys in shared memory and picks. With ScoreKernel spread over the GPU for the bytes, a selection is two
// launches instead of four.
constexpr int kPoolSelectThreads = 512;
constexpr int kPoolSelectMaxQueries = 8;

struct PoolSelectParams {
  const float* raw;        // [heads][queries][blocks] (ScoreKernel's output)
  const int32_t* sizes;    // [heads][blocks]
  int32_t queries, blocks, pow2;
  bool softmax;            // mean of per-query softmax (scale) or mean score
  float scale;
  int64_t budget;
  float* pooled;           // optional out [heads][blocks]
  int32_t* chosen;         // out [heads][blocks] (device or mapped host memory), as SelectParams
  int32_t* count;          // out [heads]
  int64_t* taken;          // out [heads]
};

// Dynamic shared memory of PoolSelectKernel: pow2 keys and blocks flags.
__host__ __device__ constexpr size_t PoolSelectSmemBytes(int32_t blocks, int32_t pow2) {
  return static_cast<size_t>(pow2) * 8 + static_cast<size_t>(blocks);
}

// grid: heads; block: kPoolSelectThreads; dynamic shared memory PoolSelectSmemBytes.
static __global__ void __launch_bounds__(kPoolSelectThreads) PoolSelectKernel(PoolSelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red_max[kPoolSelectMaxQueries][kPoolSelectThreads / 32];
  __shared__ float red_sum[kPoolSelectMaxQueries][kPoolSelectThreads / 32];
  __shared__ float row_max[kPoolSelectMaxQueries], row_sum[kPoolSelectMaxQueries];
  const int h = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  const int Q = p.queries, C = p.blocks;
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  uint8_t* flags = reinterpret_cast<uint8_t*>(keys + p.pow2);
  const float* raw = p.raw + static_cast<int64_t>(h) * Q * C;
  if (p.softmax) {
    // Each query's max, then sum of exp((raw - max) * scale), over the blocks (RowStatsKernel's two passes).
    // (Loops unrolled so that each thread's loads from L2 are in flight together.)
    float mx[kPoolSelectMaxQueries];
#pragma unroll
    for (int j = 0; j < kPoolSelectMaxQueries; ++j) {
      mx[j] = -INFINITY;
      if (j < Q) {
#pragma unroll 8
        for (int c = tid; c < C; c += blockDim.x) mx[j] = fmaxf(mx[j], raw[j * C + c]);
        mx[j] = WarpMax(mx[j]);
        if (lane == 0) red_max[j][warp] = mx[j];
      }
    }
    __syncthreads();
    if (tid < Q) {
      float m = -INFINITY;
      for (int w = 0; w < warps; ++w) m = fmaxf(m, red_max[tid][w]);
      row_max[tid] = m;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPoolSelectMaxQueries; ++j) {
      if (j < Q) {
        float t = 0.0f;
#pragma unroll 8
        for (int c = tid; c < C; c += blockDim.x) t += expf((raw[j * C + c] - row_max[j]) * p.scale);
        t = WarpSum(t);
        if (lane == 0) red_sum[j][warp] = t;
      }
    }
    __syncthreads();
    if (tid < Q) {
      float t = 0.0f;
      for (int w = 0; w < warps; ++w) t += red_sum[tid][w];
      row_sum[tid] = t;
    }
    __syncthreads();
  }
  // Pooled scores (PoolKernel's formula) straight into the sort keys.
  const float inv_q = 1.0f / static_cast<float>(Q);
  float* pooled = p.pooled != nullptr ? p.pooled + static_cast<int64_t>(h) * C : nullptr;
#pragma unroll 4
  for (int c = tid; c < p.pow2; c += blockDim.x) {
    if (c >= C) {
      keys[c] = 0ull;
      continue;
    }
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kPoolSelectMaxQueries; ++j) {
      if (j >= Q) break;
      const float v = raw[j * C + c];
      acc += p.softmax ? expf((v - row_max[j]) * p.scale) * (inv_q / row_sum[j]) : v * inv_q;
    }
    keys[c] = SelectKey(acc, c);
    if (pooled != nullptr) pooled[c] = acc;
  }
  SelectGreedyCta(p.sizes + static_cast<int64_t>(h) * C, C, p.pow2, p.budget, keys, flags,
                  p.chosen + static_cast<int64_t>(h) * C, p.count + h, p.taken + h);
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_SELECTION_CUH_
