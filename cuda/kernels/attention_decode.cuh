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
  int32_t hq, hkv, group;
  float scale_log2;             // softmax scale * log2(e)
  int64_t window;               // 0: none; else key visible iff q_pos - key_pos < window
};

// grid: (num_items, ceil(group / kGroup)); block: 32 * kDecodeWarps.
template <int kD, int kGroup>
__global__ void __launch_bounds__(32 * kDecodeWarps) DecodeKernel(DecodeParams p) {
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

__global__ void DecodeCombineKernel(DecodeCombineParams p) {
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

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_ATTENTION_DECODE_CUH_
