// File: cuda/kernels/attention_decode.cuh
//
// Split-KV ("flash-decoding") attention of one query token per sequence over per-slot lists of KV runs
// (kv_runs.cuh). The same kernel serves dense paged decode (runs = pages, or one big run) and sparse decode over
// recalled clusters (runs = the selected clusters + sink + window + the token itself).
//
// Work split: the host planner cuts every slot's flattened tokens into items (<= kMaxRunsPerItem runs each), so
// batch-1 decode still launches enough CTAs to fill the GPU. CTA = (item, chunk of kGroup query heads); its 4 warps
// stream disjoint key blocks straight from the head-major rows (16-byte loads, kUnroll key steps in flight per
// lane, no layout conversion), and every K/V row loaded is used by all query heads of the GQA group the CTA
// serves. Each lane group keeps an online-softmax state (running max m, sum l, unnormalised output o) in the
// log2 domain; states are merged through shared memory, then either normalised and written (single-item slot)
// or stored as a partial (o, m, l) that DecodeCombineKernel merges.
#ifndef LIVEKV_CUDA_KERNELS_ATTENTION_DECODE_CUH_
#define LIVEKV_CUDA_KERNELS_ATTENTION_DECODE_CUH_

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/kv_runs.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeUnroll = 4;

struct DecodeParams {
  const bf16* q;                // [num_seqs][hq][d], post-RoPE
  bf16* out;                    // [num_seqs][hq][d]
  RunTableView table;           // slots = num_seqs * hkv
  const DecodeItem* items;      // [num_items]
  const int64_t* q_positions;   // [num_seqs]: the query's position (read only when window > 0)
  float* partial_o;             // [num_items][group][d]
  float* partial_ml;            // [num_items][group][2] (max in log2 units, sum)
  int32_t* counters;            // [num_slots * gridDim.y], zero between launches (pipelined kernel only)
  int32_t hq, hkv, group;
  float scale_log2;             // softmax scale * log2(e)
  int64_t window;               // 0: none; else key visible iff q_pos - key_pos < window
  bf16* q_copy;                 // [num_seqs][hq][d] or null: the first item of each slot stores its q rows there
                                // (DecodeMmaKernel only)
};

// grid: (num_items, ceil(group / kGroup)); block: 32 * kDecodeWarps.
template <int kD, int kGroup>
static __global__ void __launch_bounds__(32 * kDecodeWarps) DecodeKernel(DecodeParams p) {
  constexpr int kLanesPerKey = kD / 8;             // 16-byte chunks per row
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;  // rows one warp loads per step
  constexpr int kStates = kDecodeWarps * kKeysPerWarp;
  constexpr int kStep = kKeysPerWarp * kDecodeUnroll;
  static_assert(kLanesPerKey >= 1 && kLanesPerKey <= 32 && (32 % kLanesPerKey) == 0, "head_dim");

  __shared__ int32_t s_tok[kMaxRunsPerItem];
  __shared__ const bf16* s_k[kMaxRunsPerItem];
  __shared__ const bf16* s_v[kMaxRunsPerItem];
  __shared__ int64_t s_pos[kMaxRunsPerItem];
  __shared__ float s_m[kStates][kGroup];
  __shared__ float s_l[kStates][kGroup];
  __shared__ float s_o[kStates][kGroup][kD];

  const DecodeItem item = p.items[blockIdx.x];
  const int h0 = blockIdx.y * kGroup;
  const int heads = min(kGroup, p.group - h0);
  const int seq = item.slot / p.hkv, kvh = item.slot % p.hkv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kLanesPerKey, c = lane % kLanesPerKey;

  for (int i = threadIdx.x; i < item.run_count; i += blockDim.x) {
    const RunDesc r = p.table.runs[item.run_begin + i];
    s_tok[i] = r.token_begin;
    s_k[i] = r.k;
    s_v[i] = r.v;
    s_pos[i] = r.first_position;
  }
  float q[kGroup][8];
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    if (h < heads) {
      const bf16* qp = p.q + (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0 + h) * kD + c * 8;
      Unpack8(*reinterpret_cast<const uint4*>(qp), q[h]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[h][e] *= p.scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) q[h][e] = 0.0f;
    }
  }
  __syncthreads();

  float m[kGroup], l[kGroup], acc[kGroup][8];
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  }
  const int64_t q_pos = p.window > 0 ? p.q_positions[seq] : 0;

  for (int base = item.token_begin + warp * kStep; base < item.token_end; base += kDecodeWarps * kStep) {
    uint4 kr[kDecodeUnroll], vr[kDecodeUnroll];
    bool ok[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int t = base + u * kKeysPerWarp + sub;
      ok[u] = t < item.token_end;
      kr[u] = make_uint4(0, 0, 0, 0);
      vr[u] = make_uint4(0, 0, 0, 0);
      if (ok[u]) {
        const int r = FindRunIn(s_tok, item.run_count, t);
        const int row = t - s_tok[r];
        const int64_t off = static_cast<int64_t>(row) * kD + c * 8;
        kr[u] = LoadStreaming(s_k[r] + off);
        vr[u] = LoadStreaming(s_v[r] + off);
        if (p.window > 0) ok[u] = q_pos - (s_pos[r] + row) < p.window;
      }
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      float kf[8];
      Unpack8(kr[u], kf);
      float s[kGroup];
#pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(q[h][e], kf[e], d);
        s[h] = WarpSum<kLanesPerKey>(d);  // every lane participates: the shuffles need the full warp
      }
      if (ok[u]) {
        float vf[8];
        Unpack8(vr[u], vf);
#pragma unroll
        for (int h = 0; h < kGroup; ++h) {
          const float m_new = fmaxf(m[h], s[h]);
          const float alpha = exp2f(m[h] - m_new);
          const float pe = exp2f(s[h] - m_new);
          l[h] = l[h] * alpha + pe;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(acc[h][e], alpha, pe * vf[e]);
          m[h] = m_new;
        }
      }
    }
  }

  const int state = warp * kKeysPerWarp + sub;
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    if (c == 0) {
      s_m[state][h] = m[h];
      s_l[state][h] = l[h];
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) s_o[state][h][c * 8 + e] = acc[h][e];
  }
  __syncthreads();

  const bool direct = item.num_slot_items == 1;
  for (int idx = threadIdx.x; idx < heads * kD; idx += blockDim.x) {
    const int h = idx / kD, d = idx % kD;
    float mx = -INFINITY;
#pragma unroll
    for (int s = 0; s < kStates; ++s) mx = fmaxf(mx, s_m[s][h]);
    float sum = 0.0f, o = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int s = 0; s < kStates; ++s) {
        const float w = exp2f(s_m[s][h] - mx);
        sum += s_l[s][h] * w;
        o += s_o[s][h][d] * w;
      }
    }
    const int qh = kvh * p.group + h0 + h;
    if (direct) {
      p.out[(static_cast<int64_t>(seq) * p.hq + qh) * kD + d] = ToBf16(sum > 0.0f ? o / sum : 0.0f);
    } else {
      const int64_t pi = static_cast<int64_t>(blockIdx.x) * p.group + h0 + h;
      p.partial_o[pi * kD + d] = o;
      if (d == 0) {
        p.partial_ml[pi * 2] = mx;
        p.partial_ml[pi * 2 + 1] = sum;
      }
    }
  }
}

// Merges the partial states of slots that were split into several items.
// grid: (num_slots, group); block: any multiple of 32 (loops over d).
struct DecodeCombineParams {
  const float* partial_o;
  const float* partial_ml;
  const int32_t* slot_items;  // [num_slots + 1]
  bf16* out;                  // [num_seqs][hq][d]
  int32_t hq, hkv, group, d;
};

static __global__ void DecodeCombineKernel(DecodeCombineParams p) {
  const int slot = blockIdx.x, h = blockIdx.y;
  const int i0 = p.slot_items[slot], i1 = p.slot_items[slot + 1];
  if (i1 - i0 <= 1) return;  // written by DecodeKernel
  float mx = -INFINITY;
  for (int i = i0; i < i1; ++i) mx = fmaxf(mx, p.partial_ml[(static_cast<int64_t>(i) * p.group + h) * 2]);
  const int seq = slot / p.hkv, kvh = slot % p.hkv;
  bf16* out = p.out + (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h) * p.d;
  for (int d = threadIdx.x; d < p.d; d += blockDim.x) {
    float sum = 0.0f, o = 0.0f;
    if (mx != -INFINITY) {
      for (int i = i0; i < i1; ++i) {
        const int64_t pi = static_cast<int64_t>(i) * p.group + h;
        const float w = exp2f(p.partial_ml[pi * 2] - mx);
        sum += p.partial_ml[pi * 2 + 1] * w;
        o += p.partial_o[pi * p.d + d] * w;
      }
    }
    out[d] = ToBf16(sum > 0.0f ? o / sum : 0.0f);
  }
}

// ---- Pipelined split-KV decode with the combine fused in ----------------------------------------------------------
// CTA = (item, chunk of kG query heads of one KV head), 128 threads. The item's keys stream through shared memory in
// tiles of 32 keys (K rows then V rows, cp.async, kStages deep), so kStages - 1 tiles are in flight while the CTA
// computes on one, without holding them in registers. Per tile:
//   S = q.K   warp w scores keys 8w..8w+7: lane = key (lane & 7) x part (lane >> 3), part p owns 16-byte chunks
//             p, p+4, ... of the row (conflict-free with the 16-byte row padding); two shuffles sum the parts;
//   softmax   warp w keeps the running max and sum of heads w, w + 4 (log2 domain), one key per lane;
//   O += P.V  thread t owns output column t % min(D, 128) (+128) of heads t / min(D, 128) (+ stride);
// every K/V row loaded is used by all kG query heads (GQA sharing). A slot cut into several items writes partial
// (o, m, l) per item; the last CTA of the slot to finish (an atomic counter per slot and grid.y chunk, which that
// CTA resets to zero) merges them, so one launch does the whole attention.

constexpr int kPipeThreads = 128;
constexpr int kPipeKeys = 32;

// kStagesWanted: shared-memory tiles per CTA (kStages - 1 in flight while one is consumed); 0 picks the default.
template <int kD, int kStagesWanted = 0>
struct PipeShape {
  static constexpr int kChunks = kD / 8;               // 16-byte chunks per row
  static constexpr int kChunksPerLane = kChunks / 4;   // 4 lanes per key
  static constexpr int kStride = kD * 2 + 16;          // bytes per padded shared row
  static constexpr int kStages = kStagesWanted > 0 ? kStagesWanted : (kD <= 64 ? 4 : 3);
  static constexpr int kTileBytes = 2 * kPipeKeys * kStride;
  static constexpr int kCols = kD < kPipeThreads ? kD : kPipeThreads;  // columns per pass
  static constexpr int kHeadStride = kPipeThreads / kCols;            // threads sharing a column
  static constexpr int kColPasses = kD / kCols;
  static_assert(kChunksPerLane >= 1 && kChunks % 4 == 0, "head_dim must be a multiple of 32");
};

template <int kD, int kStages = 0>
constexpr size_t PipeDynamicSharedBytes() {
  return static_cast<size_t>(PipeShape<kD, kStages>::kStages) * PipeShape<kD, kStages>::kTileBytes;
}

// The slot's merge, by the last CTA of a split slot: thread t owns float4 groups of (query head, 4 output columns)
// and folds the slot's items into an online-softmax state, loading the partial (m, l) and o of kMergeBatch items at
// once, so the merge is ceil(items / kMergeBatch) dependent rounds of L2 loads (33 items: 3 rounds;
// the batch barely matters, 11 to 33 within 1 % on an H100, docs/gpu.md).
constexpr int kMergeBatch = 11;
template <int kD, int kG, int kThreads>
__device__ __forceinline__ void MergeSlotPartials(const DecodeParams& p, int i0, int n_items, int h0, int heads,
                                                  int64_t out_base) {
  constexpr int kGroups = (kG * kD / 4 + kThreads - 1) / kThreads;  // float4 groups per thread
  const int64_t step = static_cast<int64_t>(p.group) * kD / 4;       // float4s from one item to the next
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    const int grp = static_cast<int>(threadIdx.x) + i * kThreads;
    if (grp >= heads * kD / 4) break;
    const int h = grp / (kD / 4), d4 = grp % (kD / 4);
    const float4* po = reinterpret_cast<const float4*>(p.partial_o) +
                       (static_cast<int64_t>(i0) * p.group + h0 + h) * (kD / 4) + d4;
    const float2* pml = reinterpret_cast<const float2*>(p.partial_ml) + static_cast<int64_t>(i0) * p.group + h0 + h;
    float m = -INFINITY, l = 0.0f;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int it = 0; it < n_items; it += kMergeBatch) {
      float4 v[kMergeBatch];
      float2 ml[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const bool in = it + u < n_items;
        v[u] = in ? __ldcg(po + (it + u) * step) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ml[u] = in ? __ldcg(pml + static_cast<int64_t>(it + u) * p.group) : make_float2(-INFINITY, 0.0f);
      }
      float mb = m;
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) mb = fmaxf(mb, ml[u].x);
      if (mb == -INFINITY) continue;  // no visible key so far
      const float so = exp2f(m - mb);  // m = -inf: 0 (a and l are 0)
      a.x *= so;
      a.y *= so;
      a.z *= so;
      a.w *= so;
      l *= so;
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const float w = exp2f(ml[u].x - mb);  // an item without visible keys (m = -inf): 0
        l = fmaf(w, ml[u].y, l);
        a.x = fmaf(w, v[u].x, a.x);
        a.y = fmaf(w, v[u].y, a.y);
        a.z = fmaf(w, v[u].z, a.z);
        a.w = fmaf(w, v[u].w, a.w);
      }
      m = mb;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    bf16* o = p.out + out_base + h * kD + d4 * 4;
    o[0] = ToBf16(a.x * inv);
    o[1] = ToBf16(a.y * inv);
    o[2] = ToBf16(a.z * inv);
    o[3] = ToBf16(a.w * inv);
  }
}

// grid: (num_items, ceil(group / kG)); block: kPipeThreads; dynamic shared memory PipeDynamicSharedBytes<kD, kSt>().
template <int kD, int kG, int kSt = 0>
static __global__ void __launch_bounds__(kPipeThreads) DecodePipelinedKernel(DecodeParams p) {
  using S = PipeShape<kD, kSt>;
  constexpr int kHeadsPerThread = (kG + S::kHeadStride - 1) / S::kHeadStride;
  constexpr int kHeadsPerWarp = (kG + 3) / 4;
  extern __shared__ __align__(16) unsigned char tiles[];
  __shared__ int32_t s_tok[kMaxRunsPerItem];
  __shared__ const bf16* s_k[kMaxRunsPerItem];
  __shared__ const bf16* s_v[kMaxRunsPerItem];
  __shared__ int64_t s_pos[kMaxRunsPerItem];
  __shared__ __align__(16) float s_q[kG][kD];
  __shared__ float s_p[kG][kPipeKeys];
  __shared__ float s_alpha[kG], s_m[kG], s_l[kG];
  __shared__ int s_last;

  const DecodeItem item = p.items[blockIdx.x];
  const int h0 = blockIdx.y * kG;
  const int heads = min(kG, p.group - h0);
  const int seq = item.slot / p.hkv, kvh = item.slot % p.hkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int i = tid; i < item.run_count; i += kPipeThreads) {
    const RunDesc r = p.table.runs[item.run_begin + i];
    s_tok[i] = r.token_begin;
    s_k[i] = r.k;
    s_v[i] = r.v;
    s_pos[i] = r.first_position;
  }
  for (int i = tid; i < kG * kD; i += kPipeThreads) {
    const int h = i / kD, d = i % kD;
    float x = 0.0f;
    if (h < heads) x = ToFloat(p.q[(static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0 + h) * kD + d]) * p.scale_log2;
    s_q[h][d] = x;
  }
  __syncthreads();

  const int64_t q_pos = p.window > 0 ? p.q_positions[seq] : 0;
  const int num_tiles = (item.token_end - item.token_begin + kPipeKeys - 1) / kPipeKeys;
  const int lkey = warp * 8 + (lane & 7), part = lane >> 3;

  auto load_tile = [&](int tile) {
    unsigned char* kb = tiles + (tile % S::kStages) * S::kTileBytes + lkey * S::kStride;
    unsigned char* vb = kb + kPipeKeys * S::kStride;
    const int t = item.token_begin + tile * kPipeKeys + lkey;
    const bf16* kp = p.q;  // any valid address: a zero-byte source is not read
    const bf16* vp = p.q;
    int bytes = 0;
    if (t < item.token_end) {
      const int r = FindRunIn(s_tok, item.run_count, t);
      const int64_t row = t - s_tok[r];
      kp = s_k[r] + row * kD;
      vp = s_v[r] + row * kD;
      bytes = 16;
    }
#pragma unroll
    for (int j = 0; j < S::kChunksPerLane; ++j) {
      const int c = part + 4 * j;
      CpAsync16(kb + c * 16, kp + (bytes ? c * 8 : 0), bytes);
      CpAsync16(vb + c * 16, vp + (bytes ? c * 8 : 0), bytes);
    }
  };

  float m_run[kHeadsPerWarp], l_run[kHeadsPerWarp];
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) m_run[i] = -INFINITY, l_run[i] = 0.0f;
  float acc[kHeadsPerThread][S::kColPasses];
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) {
#pragma unroll
    for (int e = 0; e < S::kColPasses; ++e) acc[i][e] = 0.0f;
  }
  const int col0 = tid % S::kCols, hsub = tid / S::kCols;

#pragma unroll
  for (int st = 0; st < S::kStages - 1; ++st) {
    if (st < num_tiles) load_tile(st);
    CpAsyncCommit();
  }
  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWait<S::kStages - 2>();
    __syncthreads();  // the tile is visible to all; the stage loaded next was consumed by the previous iteration
    if (tile + S::kStages - 1 < num_tiles) load_tile(tile + S::kStages - 1);
    CpAsyncCommit();
    const unsigned char* kb = tiles + (tile % S::kStages) * S::kTileBytes;
    const unsigned char* vb = kb + kPipeKeys * S::kStride;

    // Scores.
    const int t = item.token_begin + tile * kPipeKeys + lkey;
    bool valid = t < item.token_end;
    if (valid && p.window > 0) {
      const int r = FindRunIn(s_tok, item.run_count, t);
      valid = q_pos - (s_pos[r] + (t - s_tok[r])) < p.window;
    }
    float dot[kG];
#pragma unroll
    for (int h = 0; h < kG; ++h) dot[h] = 0.0f;
#pragma unroll
    for (int j = 0; j < S::kChunksPerLane; ++j) {
      const int c = part + 4 * j;
      float kf[8];
      Unpack8(*reinterpret_cast<const uint4*>(kb + lkey * S::kStride + c * 16), kf);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        const float4 qa = *reinterpret_cast<const float4*>(&s_q[h][c * 8]);
        const float4 qb = *reinterpret_cast<const float4*>(&s_q[h][c * 8 + 4]);
        float d = dot[h];
        d = fmaf(qa.x, kf[0], d);
        d = fmaf(qa.y, kf[1], d);
        d = fmaf(qa.z, kf[2], d);
        d = fmaf(qa.w, kf[3], d);
        d = fmaf(qb.x, kf[4], d);
        d = fmaf(qb.y, kf[5], d);
        d = fmaf(qb.z, kf[6], d);
        d = fmaf(qb.w, kf[7], d);
        dot[h] = d;
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], 8);
      dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], 16);
    }
    if (part == 0) {
#pragma unroll
      for (int h = 0; h < kG; ++h) s_p[h][lkey] = valid ? dot[h] : -INFINITY;
    }
    __syncthreads();

    // Online softmax: warp w owns heads w, w + 4 (warp-uniform branches).
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp; ++i) {
      const int h = warp + 4 * i;
      if (h < kG) {
        const float sc = s_p[h][lane];
        const float mn = fmaxf(m_run[i], WarpMax(sc));
        const float alpha = mn == -INFINITY ? 1.0f : exp2f(m_run[i] - mn);
        const float pe = sc == -INFINITY ? 0.0f : exp2f(sc - mn);
        l_run[i] = l_run[i] * alpha + WarpSum(pe);
        m_run[i] = mn;
        s_p[h][lane] = pe;
        if (lane == 0) s_alpha[h] = alpha;
      }
    }
    __syncthreads();

    // O = O * alpha + P V.
#pragma unroll
    for (int i = 0; i < kHeadsPerThread; ++i) {
      const int h = hsub + S::kHeadStride * i;
      if (h < kG) {
        const float a = s_alpha[h];
#pragma unroll
        for (int e = 0; e < S::kColPasses; ++e) acc[i][e] *= a;
      }
    }
#pragma unroll 8
    for (int k = 0; k < kPipeKeys; ++k) {
      float vv[S::kColPasses];
#pragma unroll
      for (int e = 0; e < S::kColPasses; ++e) {
        vv[e] = ToFloat(*reinterpret_cast<const bf16*>(vb + k * S::kStride + (col0 + e * S::kCols) * 2));
      }
#pragma unroll
      for (int i = 0; i < kHeadsPerThread; ++i) {
        const int h = hsub + S::kHeadStride * i;
        if (h < kG) {
          const float pk = s_p[h][k];
#pragma unroll
          for (int e = 0; e < S::kColPasses; ++e) acc[i][e] = fmaf(pk, vv[e], acc[i][e]);
        }
      }
    }
  }
  CpAsyncWait<0>();

#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) {
    const int h = warp + 4 * i;
    if (h < kG && lane == 0) {
      s_m[h] = m_run[i];
      s_l[h] = l_run[i];
    }
  }
  __syncthreads();

  const int64_t out_base = (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0) * kD;
  if (item.num_slot_items == 1) {
#pragma unroll
    for (int i = 0; i < kHeadsPerThread; ++i) {
      const int h = hsub + S::kHeadStride * i;
      if (h < heads) {
        const float l = s_l[h];
#pragma unroll
        for (int e = 0; e < S::kColPasses; ++e) {
          p.out[out_base + h * kD + col0 + e * S::kCols] = ToBf16(l > 0.0f ? acc[i][e] / l : 0.0f);
        }
      }
    }
    return;
  }
  // Split slot: publish this item's partial state, then the last CTA of the slot merges all of them.
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) {
    const int h = hsub + S::kHeadStride * i;
    if (h < heads) {
      const int64_t pi = static_cast<int64_t>(blockIdx.x) * p.group + h0 + h;
#pragma unroll
      for (int e = 0; e < S::kColPasses; ++e) p.partial_o[pi * kD + col0 + e * S::kCols] = acc[i][e];
    }
  }
  if (tid < heads) {
    const int64_t pi = static_cast<int64_t>(blockIdx.x) * p.group + h0 + tid;
    p.partial_ml[pi * 2] = s_m[tid];
    p.partial_ml[pi * 2 + 1] = s_l[tid];
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int32_t* counter = p.counters + static_cast<int64_t>(item.slot) * gridDim.y + blockIdx.y;
    const int prev = atomicAdd(counter, 1);
    s_last = prev == item.num_slot_items - 1;
    if (s_last) *counter = 0;  // every item of the slot has arrived: ready for the next launch
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  MergeSlotPartials<kD, kG, kPipeThreads>(p, item.first_slot_item, item.num_slot_items, h0, heads, out_base);
}

// ---- Tensor-core split-KV decode ----------------------------------------------------------------------------------
// The same work split and fused merge as DecodePipelinedKernel, with the arithmetic on tensor cores (mma.sync
// m16n8k16, bf16 in, fp32 accumulate), which cuts the instructions per byte about 7x: the kG query heads of the CTA
// are the rows of a 16-row A tile (rows past kG are zero). Each of the 4 warps streams its own sequence of 16-key
// tiles (tiles w, w + 4, ... of the item) through its own cp.async stages and keeps its own online softmax, so a
// tile needs no CTA barrier:
//   S (16 x 16 keys) = Q K^T   8 k-steps x 2 n-tiles of 8 keys, B fragments straight from the K rows in shared memory;
//   P = exp2(S * scale - m)    on the accumulator fragments (row = head g = lane / 4, columns 2t, 2t + 1);
//   O (16 x D) += P V          P repacked as the A fragment, V B fragments from shared memory (conflict-free).
// Loads (kRowLoads = false, the default): lane l copies 16-byte chunk l % (D / 8) of row l / (D / 8) (+ 32 / (D / 8)
// per copy), so one warp-wide cp.async reads whole rows: 512 contiguous bytes at D = 128 when the tile's rows are
// contiguous in memory (checked per tile with a warp vote; otherwise each row's address comes from the lane that
// looked it up, by shuffle). Every 32-byte sector an instruction touches is fully used. kRowLoads = true is the
// first mapping (lane = key, 8 chunks of its own row per lane: 32 half-used sectors per instruction), kept for
// comparison. The B fragments come from shared memory by ldmatrix (K: one x4 per 16 dims for both key n-tiles; V:
// one x4.trans per 16 output columns) instead of 32-bit and 16-bit loads (kRowLoads = true keeps those: per tile
// and thread 32 + 64 loads and 32 packs instead of 16 ldmatrix).
// The 4 warp states merge through shared memory at the end; split slots then merge across CTAs: the last CTA of a
// slot folds the items' partial states in (MergeSlotPartials).

constexpr int kMmaWarps = 4;
constexpr int kMmaKeys = 16;  // keys per warp tile

template <int kD, int kStages>
struct MmaShape {
  static constexpr int kStride = kD * 2 + 16;                   // bytes per padded shared row
  static constexpr int kTileBytes = 2 * kMmaKeys * kStride;     // K rows then V rows
  static constexpr int kWarpBytes = kStages * kTileBytes;
  static constexpr int kChunksPerLane = kD / 8 / 2;             // 16-byte chunks per lane: 2 lanes per key
};

template <int kD, int kStages>
constexpr size_t MmaDynamicSharedBytes() {
  const size_t tiles = static_cast<size_t>(kMmaWarps) * MmaShape<kD, kStages>::kWarpBytes;
  const size_t merge = static_cast<size_t>(kMmaWarps) * 8 * kD * 4;  // per warp O rows of 8 heads
  return tiles > merge ? tiles : merge;
}

// grid: (num_items, ceil(group / 8)); block: 32 * kMmaWarps; dynamic shared memory MmaDynamicSharedBytes<kD, kStages>().
template <int kD, int kStages, bool kRowLoads = false>
static __global__ void __launch_bounds__(32 * kMmaWarps) DecodeMmaKernel(DecodeParams p) {
  using S = MmaShape<kD, kStages>;
  constexpr int kG = 8;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int32_t s_tok[kMaxRunsPerItem];
  __shared__ const bf16* s_k[kMaxRunsPerItem];
  __shared__ const bf16* s_v[kMaxRunsPerItem];
  __shared__ int64_t s_pos[kMaxRunsPerItem];
  __shared__ uint8_t s_ok[kMmaWarps][kStages][kMmaKeys];
  __shared__ float s_wm[kMmaWarps][kG], s_wl[kMmaWarps][kG];
  __shared__ float s_m[kG], s_l[kG];
  __shared__ int s_last;

  // Programmatic launch (a no-op otherwise): the plan (device memory, or pinned host memory read zero-copy) and the
  // KV rows of the context are not written by the previous kernel, so the item's runs are read and the first tiles'
  // copies issued before waiting for it; q, the positions, the token's own KV row (the slot's last token: its last
  // run, which the previous kernel may have just written), the workspace and the output only after.
  const DecodeItem item = p.items[blockIdx.x];
  const int h0 = blockIdx.y * kG;
  const int heads = min(kG, p.group - h0);
  const int seq = item.slot / p.hkv, kvh = item.slot % p.hkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;

  for (int i = tid; i < item.run_count; i += blockDim.x) {
    const RunDesc r = p.table.runs[item.run_begin + i];
    s_tok[i] = r.token_begin;
    s_k[i] = r.k;
    s_v[i] = r.v;
    s_pos[i] = r.first_position;
  }
  __syncthreads();  // the runs, for the tile lookups

  int64_t q_pos = 0;  // the query position (read after the wait, only with a window)
  const int num_tiles = (item.token_end - item.token_begin + kMmaKeys - 1) / kMmaKeys;
  unsigned char* wbase = smem + warp * S::kWarpBytes;
  const int lkey = lane & 15, half = lane >> 4;

  // This warp's tiles: w, w + 4, ...; its n-th tile goes to stage n % kStages. Lane l looks up key l % 16 (its run,
  // row addresses and visibility); the copies then follow the row-contiguous mapping above.
  constexpr int kChunks = kD / 8;                 // 16-byte chunks per row
  constexpr int kRowsPerCopy = 32 / kChunks;       // whole rows one warp-wide copy covers (1 at D = 256)
  constexpr int kCopies = kMmaKeys / kRowsPerCopy; // copies per tile, each of K and of V
  const int crow = lane / kChunks, cchunk = lane % kChunks;
  auto load = [&](int n) {
    const int tile = warp + n * kMmaWarps;
    const int st = n % kStages;
    unsigned char* kt = wbase + st * S::kTileBytes;
    unsigned char* vt = kt + kMmaKeys * S::kStride;
    const int tok0 = item.token_begin + tile * kMmaKeys;
    const int tok = tok0 + lkey;
    const bf16* kp = p.q;  // any valid address: a zero-byte source is not read
    const bf16* vp = p.q;
    const bool valid = tok < item.token_end;
    bool ok = false;
    if (valid) {
      const int r = FindRunIn(s_tok, item.run_count, tok);
      const int64_t row = tok - s_tok[r];
      kp = s_k[r] + row * kD;
      vp = s_v[r] + row * kD;
      ok = p.window <= 0 || q_pos - (s_pos[r] + row) < p.window;
    }
    if (half == 0) s_ok[warp][st][lkey] = ok;
    if constexpr (kRowLoads) {
      unsigned char* kb = kt + lkey * S::kStride;
      unsigned char* vb = vt + lkey * S::kStride;
      const int bytes = valid ? 16 : 0;
#pragma unroll
      for (int j = 0; j < S::kChunksPerLane; ++j) {
        const int c = half * S::kChunksPerLane + j;
        CpAsync16(kb + c * 16, kp + (bytes ? c * 8 : 0), bytes);
        CpAsync16(vb + c * 16, vp + (bytes ? c * 8 : 0), bytes);
      }
    } else {
      const bf16* k0 = reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(kp), 0));
      const bf16* v0 = reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(vp), 0));
      const bool contiguous = __all_sync(0xffffffffu, !valid || (kp == k0 + lkey * kD && vp == v0 + lkey * kD));
      if (contiguous) {
#pragma unroll
        for (int j = 0; j < kCopies; ++j) {
          const int rr = j * kRowsPerCopy + crow;
          const bool rv = tok0 + rr < item.token_end;
          CpAsync16(kt + rr * S::kStride + cchunk * 16, rv ? k0 + rr * kD + cchunk * 8 : p.q, rv ? 16 : 0);
          CpAsync16(vt + rr * S::kStride + cchunk * 16, rv ? v0 + rr * kD + cchunk * 8 : p.q, rv ? 16 : 0);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kCopies; ++j) {
          const int rr = j * kRowsPerCopy + crow;
          const bool rv = tok0 + rr < item.token_end;
          const bf16* kr = reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(kp), rr));
          const bf16* vr = reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(vp), rr));
          CpAsync16(kt + rr * S::kStride + cchunk * 16, rv ? kr + cchunk * 8 : p.q, rv ? 16 : 0);
          CpAsync16(vt + rr * S::kStride + cchunk * 16, rv ? vr + cchunk * 8 : p.q, rv ? 16 : 0);
        }
      }
    }
  };
  const int my_tiles = warp < num_tiles ? (num_tiles - warp + kMmaWarps - 1) / kMmaWarps : 0;

  float o[kD / 8][4];
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // row g's running max (log2 units) and this thread's partial sum

  // The first kStages - 1 tiles, one commit group each: those that end before the item's last token (which may be
  // the token's own row) already now when no window needs q_pos, the others after the wait.
  int issued = 0;
  if (p.window <= 0) {
    for (; issued < kStages - 1 && issued < my_tiles; ++issued) {
      const int tile = warp + issued * kMmaWarps;
      if (item.token_begin + (tile + 1) * kMmaKeys >= item.token_end) break;
      load(issued);
      CpAsyncCommit();
    }
  }
  GridDependencyWait();
  GridDependentsLaunch();
  if (p.q_copy != nullptr && blockIdx.x == item.first_slot_item) {
    // The snapshot of this CTA's query heads: heads * kD contiguous elements, 16 bytes per thread and step.
    const int64_t base = (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0) * kD;
    const uint4* src = reinterpret_cast<const uint4*>(p.q + base);
    uint4* dst = reinterpret_cast<uint4*>(p.q_copy + base);
    for (int i = tid; i < heads * kD / 8; i += blockDim.x) dst[i] = src[i];
  }

  if (p.window > 0) q_pos = p.q_positions[seq];
  for (int n = issued; n < kStages - 1; ++n) {
    if (n < my_tiles) load(n);
    CpAsyncCommit();
  }
  // Q as A fragments (rows g < heads; rows g + 8 are padding): a0 = Q[g][16kk + 2t..], a2 = Q[g][16kk + 2t + 8..].
  // Loaded after the first tiles' copies are issued, so their latencies overlap.
  uint32_t qa[kD / 16][2];
  const bf16* qrow = p.q + (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0 + g) * kD;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    qa[kk][0] = g < heads ? LoadU32(qrow + kk * 16 + 2 * t) : 0u;
    qa[kk][1] = g < heads ? LoadU32(qrow + kk * 16 + 2 * t + 8) : 0u;
  }
  for (int n = 0; n < my_tiles; ++n) {
    CpAsyncWait<kStages - 2>();
    __syncwarp();  // the tile's rows, written by every lane's copies, are visible to the warp
    if (n + kStages - 1 < my_tiles) load(n + kStages - 1);
    CpAsyncCommit();
    const int st = n % kStages;
    const unsigned char* kb = wbase + st * S::kTileBytes;
    const unsigned char* vb = kb + kMmaKeys * S::kStride;
    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t a[4] = {qa[kk][0], 0u, qa[kk][1], 0u};
      if constexpr (kRowLoads) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const bf16* krow = reinterpret_cast<const bf16*>(kb + (nt * 8 + g) * S::kStride) + kk * 16 + 2 * t;
          MmaBf16(s[nt], a, LoadU32(krow), LoadU32(krow + 8));
        }
      } else {
        // Matrices: keys 0-7 x dims 16kk + 0-7, + 8-15, keys 8-15 x the same: b0, b1 of n-tiles 0 and 1.
        uint32_t b[4];
        LdMatrixX4(b, kb + (((lane >> 4) & 1) * 8 + (lane & 7)) * S::kStride + (kk * 16 + ((lane >> 3) & 1) * 8) * 2);
        MmaBf16(s[0], a, b[0], b[1]);
        MmaBf16(s[1], a, b[2], b[3]);
      }
    }
    // Scale, mask, online softmax for row g (columns of this thread: keys nt * 8 + 2t + {0, 1}).
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool ok = s_ok[warp][st][nt * 8 + 2 * t + e];
        s[nt][e] = ok ? s[nt][e] * p.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[nt][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m, mx);
    const float base = mn == -INFINITY ? 0.0f : mn;
    const float alpha = exp2f(m - base);
    m = mn;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base);
        sum += s[nt][e];
      }
    }
    l = l * alpha + sum;
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd) {
      o[nd][0] *= alpha;
      o[nd][1] *= alpha;
    }
    // O += P V: A = P (row g: keys 2t, 2t + 1 of n-tile 0 in a0, of n-tile 1 in a2), B = V[keys][d columns].
    const uint32_t pa[4] = {PackBf16x2(s[0][0], s[0][1]), 0u, PackBf16x2(s[1][0], s[1][1]), 0u};
    if constexpr (kRowLoads) {
      const bf16* vrow = reinterpret_cast<const bf16*>(vb + (2 * t) * S::kStride) + g;
      constexpr int kVs = S::kStride / 2;  // row stride in elements
#pragma unroll
      for (int nd = 0; nd < kD / 8; ++nd) {
        const bf16* vc = vrow + nd * 8;
        const uint32_t b0 = PackBf16x2(vc[0], vc[kVs]);
        const uint32_t b1 = PackBf16x2(vc[8 * kVs], vc[9 * kVs]);
        MmaBf16(o[nd], pa, b0, b1);
      }
    } else {
      // Transposed matrices: keys 0-7 x dims 8nd + 0-7, keys 8-15 x the same, then dims 8(nd + 1) + 0-7: b0, b1
      // of column tiles nd and nd + 1.
      const unsigned char* vl = vb + (((lane >> 3) & 1) * 8 + (lane & 7)) * S::kStride + ((lane >> 4) & 1) * 16;
#pragma unroll
      for (int nd = 0; nd < kD / 8; nd += 2) {
        uint32_t b[4];
        LdMatrixX4Trans(b, vl + nd * 16);
        MmaBf16(o[nd], pa, b[0], b[1]);
        MmaBf16(o[nd + 1], pa, b[2], b[3]);
      }
    }
  }
  CpAsyncWait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  __syncthreads();  // every warp is done with its tiles: the tile memory becomes the merge buffer

  // Merge the 4 warps: per head the max and normaliser, then O rows summed with weights.
  float* s_o = reinterpret_cast<float*>(smem);  // [warp][8 rows][kD]
  if (t == 0) {
    s_wm[warp][g] = m;
    s_wl[warp][g] = l;
  }
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd) {
    s_o[(warp * 8 + g) * kD + nd * 8 + 2 * t] = o[nd][0];
    s_o[(warp * 8 + g) * kD + nd * 8 + 2 * t + 1] = o[nd][1];
  }
  __syncthreads();
  if (tid < kG) {
    float mxw = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) mxw = fmaxf(mxw, s_wm[w][tid]);
    float tot = 0.0f;
    if (mxw != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) tot += s_wl[w][tid] * exp2f(s_wm[w][tid] - mxw);
    }
    s_m[tid] = mxw;
    s_l[tid] = tot;
  }
  __syncthreads();
  const int64_t out_base = (static_cast<int64_t>(seq) * p.hq + kvh * p.group + h0) * kD;
  const bool direct = item.num_slot_items == 1;
  for (int idx = tid; idx < heads * kD; idx += blockDim.x) {
    const int h = idx / kD, d = idx % kD;
    const float mxw = s_m[h];
    float acc = 0.0f;
    if (mxw != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) acc += s_o[(w * 8 + h) * kD + d] * exp2f(s_wm[w][h] - mxw);
    }
    if (direct) {
      p.out[out_base + h * kD + d] = ToBf16(s_l[h] > 0.0f ? acc / s_l[h] : 0.0f);
    } else {
      p.partial_o[(static_cast<int64_t>(blockIdx.x) * p.group + h0 + h) * kD + d] = acc;
    }
  }
  if (direct) return;
  if (tid < heads) {
    const int64_t pi = static_cast<int64_t>(blockIdx.x) * p.group + h0 + tid;
    p.partial_ml[pi * 2] = s_m[tid];
    p.partial_ml[pi * 2 + 1] = s_l[tid];
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int32_t* counter = p.counters + static_cast<int64_t>(item.slot) * gridDim.y + blockIdx.y;
    const int prev = atomicAdd(counter, 1);
    s_last = prev == item.num_slot_items - 1;
    if (s_last) *counter = 0;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  MergeSlotPartials<kD, kG, 32 * kMmaWarps>(p, item.first_slot_item, item.num_slot_items, h0, heads, out_base);
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_ATTENTION_DECODE_CUH_
