// File: cuda/kernels/attention_prefill.cuh
//
// Causal prefill attention, flash-style: a chunk of n query tokens attends to its context (per-KV-head runs,
// kv_runs.cuh, every key visible) and to its own keys causally (key j visible to query row r iff j <= r), with
// GQA and an optional sliding window — the semantics of engine/cpu/cpu_attention.cc.
//
// CTA = (tile of 64 query rows, KV head). A "row" is a (token, query head of the group) pair, so the group's heads
// share every K/V tile. 4 warps own 16 rows each. Per key tile of 64: K and V rows go to shared memory, S = Q K^T
// and O += P V run on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulate), with the online softmax (running
// max and sum, log2 domain) kept in the accumulator fragments.
#ifndef LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_
#define LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/kv_runs.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kPrefillRows = 64;  // query rows per CTA
constexpr int kPrefillKeys = 64;  // keys per tile
constexpr int kPrefillThreads = 128;

struct PrefillParams {
  const bf16* q;          // [n][hq][d], post-RoPE
  const bf16* k;          // [n][hkv][d], the chunk's own keys (post-RoPE)
  const bf16* v;          // [n][hkv][d]
  bf16* out;              // [n][hq][d]
  RunTableView table;     // slots = KV heads of this sequence; may have no runs
  int32_t n, hq, hkv, group;
  int64_t pos0;           // position of chunk row 0
  float scale_log2;       // softmax scale * log2(e)
  int64_t window;         // 0: none
};

template <int kD>
constexpr size_t PrefillSharedBytes() {
  return 3 * static_cast<size_t>(kPrefillRows) * (kD + 8) * sizeof(bf16);
}

// grid: (ceil(n * group / 64), hkv); block: 128; dynamic shared memory PrefillSharedBytes<kD>().
template <int kD>
static __global__ void __launch_bounds__(kPrefillThreads) PrefillKernel(PrefillParams p) {
  constexpr int kStride = kD + 8;  // padded row: conflict-free fragment loads
  constexpr int kChunks = kD / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = qs + kPrefillRows * kStride;
  bf16* vs = ks + kPrefillKeys * kStride;
  __shared__ const bf16* s_kp[kPrefillKeys];
  __shared__ const bf16* s_vp[kPrefillKeys];
  __shared__ int64_t s_kpos[kPrefillKeys];

  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t total_rows = static_cast<int64_t>(p.n) * p.group;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kPrefillRows;

  for (int i = tid; i < kPrefillRows * kChunks; i += kPrefillThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t R = row0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (R < total_rows) {
      const int64_t tq = R / p.group, hh = R % p.group;
      val = *reinterpret_cast<const uint4*>(p.q + (tq * p.hq + h * p.group + hh) * kD + c * 8);
    }
    *reinterpret_cast<uint4*>(qs + r * kStride + c * 8) = val;
  }

  const int run_lo = p.table.slot_runs[h], run_hi = p.table.slot_runs[h + 1];
  const int ctx = p.table.slot_tokens[h];
  const int64_t last_row = min(row0 + kPrefillRows - 1, total_rows - 1);
  const int64_t num_keys = ctx + last_row / p.group + 1;

  const int ra = warp * 16 + g, rb = ra + 8;  // this thread's two rows within the tile
  const bool va = row0 + ra < total_rows, vb = row0 + rb < total_rows;
  const int64_t tqa = (row0 + ra) / p.group, tqb = (row0 + rb) / p.group;

  float o[kD / 8][4];
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

  for (int64_t kt = 0; kt * kPrefillKeys < num_keys; ++kt) {
    __syncthreads();  // the previous tile's K/V (and, first time, nothing) are no longer read
    if (tid < kPrefillKeys) {
      const int64_t idx = kt * kPrefillKeys + tid;
      const bf16* kp = nullptr;
      const bf16* vp = nullptr;
      int64_t pos = -1;
      if (idx < ctx) {
        const int r = FindRun(p.table.runs, run_lo, run_hi, static_cast<int>(idx));
        const RunDesc& run = p.table.runs[r];
        const int64_t off = idx - run.token_begin;
        kp = run.k + off * kD;
        vp = run.v + off * kD;
        pos = run.first_position >= 0 ? run.first_position + off : -1;
      } else if (idx < num_keys) {
        const int64_t j = idx - ctx;
        kp = p.k + (j * p.hkv + h) * kD;
        vp = p.v + (j * p.hkv + h) * kD;
        pos = p.pos0 + j;
      }
      s_kp[tid] = kp;
      s_vp[tid] = vp;
      s_kpos[tid] = pos;
    }
    __syncthreads();
    for (int i = tid; i < kPrefillKeys * kChunks; i += kPrefillThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const bf16* kp = s_kp[r];
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kp != nullptr) {
        kv = *reinterpret_cast<const uint4*>(kp + c * 8);
        vv = *reinterpret_cast<const uint4*>(s_vp[r] + c * 8);
      }
      *reinterpret_cast<uint4*>(ks + r * kStride + c * 8) = kv;
      *reinterpret_cast<uint4*>(vs + r * kStride + c * 8) = vv;
    }
    __syncthreads();

    // S = Q K^T: this warp's 16 rows x 64 keys, as 8 n-tiles of 16x8.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      const bf16* qa = qs + (warp * 16 + g) * kStride + kk * 16 + 2 * t;
      a[0] = LoadU32(qa);
      a[1] = LoadU32(qa + 8 * kStride);
      a[2] = LoadU32(qa + 8);
      a[3] = LoadU32(qa + 8 * kStride + 8);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const bf16* kb = ks + (nt * 8 + g) * kStride + kk * 16 + 2 * t;
        MmaBf16(s[nt], a, LoadU32(kb), LoadU32(kb + 8));
      }
    }

    // Mask and scale; row maxima.
    float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t + (e & 1);
        const int64_t idx = kt * kPrefillKeys + col;
        const bool row_a = e < 2;
        const int64_t tq = row_a ? tqa : tqb;
        bool vis = (row_a ? va : vb) && idx < num_keys;
        if (vis) {
          if (idx >= ctx) {
            const int64_t j = idx - ctx;
            vis = j <= tq && (p.window <= 0 || tq - j < p.window);
          } else if (p.window > 0) {
            vis = (p.pos0 + tq) - s_kpos[col] < p.window;
          }
        }
        const float val = vis ? s[nt][e] * p.scale_log2 : -INFINITY;
        s[nt][e] = val;
        if (row_a) {
          mxa = fmaxf(mxa, val);
        } else {
          mxb = fmaxf(mxb, val);
        }
      }
    }
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
    const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
    const float ua = na == -INFINITY ? 0.0f : na, ub = nb == -INFINITY ? 0.0f : nb;
    const float alpha_a = exp2f(ma - ua), alpha_b = exp2f(mb - ub);
    ma = na;
    mb = nb;
    float suma = 0.0f, sumb = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - ua);
      s[nt][1] = exp2f(s[nt][1] - ua);
      s[nt][2] = exp2f(s[nt][2] - ub);
      s[nt][3] = exp2f(s[nt][3] - ub);
      suma += s[nt][0] + s[nt][1];
      sumb += s[nt][2] + s[nt][3];
    }
    la = la * alpha_a + suma;  // per-thread partial row sums; reduced over the quad at the end
    lb = lb * alpha_b + sumb;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      o[dt][0] *= alpha_a;
      o[dt][1] *= alpha_a;
      o[dt][2] *= alpha_b;
      o[dt][3] *= alpha_b;
    }

    // O += P V: P (16 x 64, from the S fragments) as A, V (64 keys x d) as B.
#pragma unroll
    for (int kk = 0; kk < kPrefillKeys / 16; ++kk) {
      uint32_t a[4];
      a[0] = PackBf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = PackBf16x2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const bf16* vrow = vs + (kk * 16 + 2 * t) * kStride + g;
#pragma unroll
      for (int dt = 0; dt < kD / 8; ++dt) {
        const bf16* vb = vrow + dt * 8;
        const uint32_t b0 = PackBf16x2(vb[0], vb[kStride]);
        const uint32_t b1 = PackBf16x2(vb[8 * kStride], vb[9 * kStride]);
        MmaBf16(o[dt], a, b0, b1);
      }
    }
  }

  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  const float inva = la > 0.0f ? 1.0f / la : 0.0f, invb = lb > 0.0f ? 1.0f / lb : 0.0f;
  if (va) {
    const int64_t hh = (row0 + ra) % p.group;
    bf16* dst = p.out + (tqa * p.hq + h * p.group + hh) * kD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) = __floats2bfloat162_rn(o[dt][0] * inva, o[dt][1] * inva);
    }
  }
  if (vb) {
    const int64_t hh = (row0 + rb) % p.group;
    bf16* dst = p.out + (tqb * p.hq + h * p.group + hh) * kD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) = __floats2bfloat162_rn(o[dt][2] * invb, o[dt][3] * invb);
    }
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_
