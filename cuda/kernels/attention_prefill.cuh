// File: cuda/kernels/attention_prefill.cuh
//
// Causal prefill attention, flash-style: a chunk of n query tokens attends to its context (per-KV-head runs,
// kv_runs.cuh, every key visible) and to its own keys causally (key j visible to query row r iff j <= r), with
// GQA and an optional sliding window — the semantics of engine/cpu/cpu_attention.cc.
//
// CTA = (tile of 64 query rows, KV head). A "row" is a (token, query head of the group) pair, so the group's heads
// share every K/V tile. 4 warps own 16 rows each. Per key tile of 64: S = Q K^T and O += P V run on bf16 tensor cores
// (mma.sync m16n8k16, fp32 accumulate; A and B fragments from shared memory by ldmatrix), with the online softmax
// (running max and sum, log2 domain) kept in the accumulator fragments. K/V tiles are double-buffered: while the CTA
// computes tile t, its threads have already looked up tile t + 1's rows and issued their cp.async copies (whole rows
// per copy instruction: LoadPrefillTile). Tiles every row of the CTA sees whole (no window, no causal cut, no padding
// rows) skip the mask.
//
// On Hopper (sm_90a, head_dim 64 and 128) the same tiles and softmax run on wgmma, 128 query rows per CTA:
// PrefillWgmmaKernel (every warp loads and computes) and PrefillWsKernel (warp-specialized: a producer warpgroup
// loads tiles of 128 keys for two computing warpgroups; the default there).
#ifndef LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_
#define LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/kv_runs.cuh"
#include "cuda/kernels/wgmma.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

constexpr int kPrefillRows = 64;  // query rows per CTA
constexpr int kPrefillKeys = 64;  // keys per tile
constexpr int kPrefillThreads = 128;

struct PrefillParams {
  const bf16* q;       // [n][hq][d], post-RoPE
  const bf16* k;       // [n][hkv][d], the chunk's own keys (post-RoPE)
  const bf16* v;       // [n][hkv][d]
  bf16* out;           // [n][hq][d]
  RunTableView table;  // slots = KV heads of this sequence; may have no runs
  int32_t n, hq, hkv, group;
  int64_t pos0;      // position of chunk row 0
  float scale_log2;  // softmax scale * log2(e)
  int64_t window;    // 0: none
};

template <int kD>
constexpr size_t PrefillSharedBytes() {  // Q, then two buffers of K and V rows
  return 5 * static_cast<size_t>(kPrefillRows) * (kD + 8) * sizeof(bf16);
}

// Tile kt's 64 key rows (the context runs' keys first, then the chunk's own) into shared memory by cp.async, with
// their positions into kpos (-1: none), by kWarps warps. Warp w copies rows w, w + kWarps, ...: lane q looks up row
// w + kWarps q, then each copy instruction moves whole rows (lane l: 16-byte chunk l % (kD / 8) of row l / (kD / 8) of
// the step; 512 contiguous bytes per instruction at kD 128), so every 32-byte sector fetched is used. dst(row, chunk)
// is the chunk's byte offset in the K (and V) tile. Rows past num_keys are zero-filled.
template <int kD, int kWarps, int kKeys = kPrefillKeys, typename Dst>
__device__ __forceinline__ void LoadPrefillTile(const PrefillParams& p, int h, int run_lo, int run_hi, int ctx,
                                                int64_t num_keys, int64_t kt, unsigned char* kd, unsigned char* vd,
                                                int64_t* kpos, Dst dst) {
  constexpr int kChunks = kD / 8;             // 16-byte chunks per row
  constexpr int kRowsPerCopy = 32 / kChunks;  // rows one warp-wide copy covers
  constexpr int kRowsPerWarp = kKeys / kWarps;
  constexpr int kCopies = kRowsPerWarp / kRowsPerCopy;  // copies per warp for its rows (each of K and V)
  static_assert(kChunks <= 32 && 32 % kChunks == 0 && kRowsPerWarp % kRowsPerCopy == 0, "head_dim");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bf16* kp = nullptr;  // lane q < kRowsPerWarp: its row's K and V (null past the keys)
  const bf16* vp = nullptr;
  if (lane < kRowsPerWarp) {
    const int row = warp + kWarps * lane;
    const int64_t idx = kt * kKeys + row;
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
    kpos[row] = pos;
  }
  const int sub = lane / kChunks, chunk = lane % kChunks;
#pragma unroll
  for (int j = 0; j < kCopies; ++j) {
    const int q = j * kRowsPerCopy + sub;  // the row's lookup lane
    const bf16* kr =
        reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(kp), q));
    const bf16* vr =
        reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(vp), q));
    const uint32_t at = dst(warp + kWarps * q, chunk);
    const bool valid = kr != nullptr;
    CpAsync16(kd + at, valid ? kr + chunk * 8 : p.k, valid ? 16 : 0);
    CpAsync16(vd + at, valid ? vr + chunk * 8 : p.k, valid ? 16 : 0);
  }
}

// The online softmax of one tile, on the tensor-core accumulator layout every prefill kernel shares (per n-tile nt of
// 8 keys: s[4nt + 0..1] = row ra, keys 8nt + 2t ..; s[4nt + 2..3] = row rb). Mask and scale tile kt's scores (unless every row of the CTA sees the whole tile: kt's keys end at or before
// seen_by_all), then the online softmax: the running maxima ma / mb and sums la / lb move on, s becomes P, and the
// factors the output must be scaled by are returned in alpha_a / alpha_b. kpos: the tile's key positions (window).
template <int kKeys>
__device__ __forceinline__ void PrefillTileSoftmax(const PrefillParams& p, float (&s)[kKeys / 2], int kt, int ctx,
                                                   int num_keys, int seen_by_all, int tqa, int tqb, bool va, bool vb,
                                                   int t, const int64_t* kpos, float& ma, float& mb, float& la,
                                                   float& lb, float& alpha_a, float& alpha_b) {
  float mxa = -INFINITY, mxb = -INFINITY;
  if ((kt + 1) * kKeys <= seen_by_all) {
#pragma unroll
    for (int i = 0; i < kKeys / 2; i += 4) {
      s[i] *= p.scale_log2;
      s[i + 1] *= p.scale_log2;
      s[i + 2] *= p.scale_log2;
      s[i + 3] *= p.scale_log2;
      mxa = fmaxf(mxa, fmaxf(s[i], s[i + 1]));
      mxb = fmaxf(mxb, fmaxf(s[i + 2], s[i + 3]));
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t + (e & 1);
        const int idx = kt * kKeys + col;
        const bool row_a = e < 2;
        const int tq = row_a ? tqa : tqb;
        bool vis = (row_a ? va : vb) && idx < num_keys;
        if (vis) {
          if (idx >= ctx) {
            const int j = idx - ctx;
            vis = j <= tq && (p.window <= 0 || tq - j < p.window);
          } else if (p.window > 0) {
            vis = (p.pos0 + tq) - kpos[col] < p.window;
          }
        }
        const float val = vis ? s[4 * nt + e] * p.scale_log2 : -INFINITY;
        s[4 * nt + e] = val;
        if (row_a) {
          mxa = fmaxf(mxa, val);
        } else {
          mxb = fmaxf(mxb, val);
        }
      }
    }
  }
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
  const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
  const float ua = na == -INFINITY ? 0.0f : na, ub = nb == -INFINITY ? 0.0f : nb;
  alpha_a = exp2f(ma - ua);
  alpha_b = exp2f(mb - ub);
  ma = na;
  mb = nb;
  float suma = 0.0f, sumb = 0.0f;
#pragma unroll
  for (int i = 0; i < kKeys / 2; i += 4) {
    s[i] = exp2f(s[i] - ua);
    s[i + 1] = exp2f(s[i + 1] - ua);
    s[i + 2] = exp2f(s[i + 2] - ub);
    s[i + 3] = exp2f(s[i + 3] - ub);
    suma += s[i] + s[i + 1];
    sumb += s[i + 2] + s[i + 3];
  }
  la = la * alpha_a + suma;  // per-thread partial row sums; reduced over the quad at the end
  lb = lb * alpha_b + sumb;
}

// Normalises and stores this thread's part of rows ra and rb (CTA rows; their global rows are row_a and row_b).
template <int kD>
__device__ __forceinline__ void PrefillStoreRows(const PrefillParams& p, int h, int64_t row_a, int64_t row_b, int tqa,
                                                 int tqb, bool va, bool vb, int t, const float (&o)[kD / 2], float la,
                                                 float lb) {
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  const float inva = la > 0.0f ? 1.0f / la : 0.0f, invb = lb > 0.0f ? 1.0f / lb : 0.0f;
  if (va) {
    const int64_t hh = row_a % p.group;
    bf16* dst = p.out + (static_cast<int64_t>(tqa) * p.hq + h * p.group + hh) * kD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) = __floats2bfloat162_rn(o[4 * dt] * inva, o[4 * dt + 1] * inva);
    }
  }
  if (vb) {
    const int64_t hh = row_b % p.group;
    bf16* dst = p.out + (static_cast<int64_t>(tqb) * p.hq + h * p.group + hh) * kD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) =
          __floats2bfloat162_rn(o[4 * dt + 2] * invb, o[4 * dt + 3] * invb);
    }
  }
}

// grid: (ceil(n * group / 64), hkv); block: 128; dynamic shared memory PrefillSharedBytes<kD>().
template <int kD>
static __global__ void __launch_bounds__(kPrefillThreads) PrefillKernel(PrefillParams p) {
  static_assert(kD % 16 == 0, "head_dim must be a multiple of 16");
  constexpr int kStride = kD + 8;  // padded row (elements): conflict-free ldmatrix
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  constexpr int kTileElems = kPrefillKeys * kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* kvs = qs + kPrefillRows * kStride;  // buffer b: K rows at kvs + 2b * kTileElems, V rows after them
  __shared__ int64_t s_kpos[2][kPrefillKeys];

  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t total_rows = static_cast<int64_t>(p.n) * p.group;
  // Row tiles in reverse launch order: the last rows see the most keys, so the longest CTAs start first.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kPrefillRows;

  const int run_lo = p.table.slot_runs[h], run_hi = p.table.slot_runs[h + 1];
  const int ctx = p.table.slot_tokens[h];
  const int64_t last_row = min(row0 + kPrefillRows - 1, total_rows - 1);
  // Key and token indices fit int32 (the plan's token counts are int32).
  const int num_keys = ctx + static_cast<int>(last_row / p.group) + 1;
  const int num_tiles = (num_keys + kPrefillKeys - 1) / kPrefillKeys;
  // Keys every row of the CTA sees: the context and the chunk's keys up to its first row's token (no window).
  const int first_token = static_cast<int>(row0 / p.group);
  const int seen_by_all = p.window > 0 || row0 + kPrefillRows > total_rows ? 0 : ctx + first_token + 1;

  auto load_tile = [&](int64_t kt, int buf) {
    unsigned char* kd = reinterpret_cast<unsigned char*>(kvs + 2 * buf * kTileElems);
    LoadPrefillTile<kD, kPrefillThreads / 32>(
        p, h, run_lo, run_hi, ctx, num_keys, kt, kd, kd + kTileElems * sizeof(bf16), s_kpos[buf],
        [](int row, int chunk) { return static_cast<uint32_t>((row * kStride + chunk * 8) * 2); });
  };
  load_tile(0, 0);
  CpAsyncCommit();

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

  const int ra = warp * 16 + g, rb = ra + 8;  // this thread's two rows within the tile
  const bool va = row0 + ra < total_rows, vb = row0 + rb < total_rows;
  const int tqa = static_cast<int>((row0 + ra) / p.group), tqb = static_cast<int>((row0 + rb) / p.group);
  // ldmatrix lane addresses: Q (A, x4: rows 0-7 / 8-15 x columns 0-7 / 8-15), K (B of two n-tiles, x4), V (B of two
  // column tiles, x4.trans), relative to the tile and the 16-column (Q, K) or 16-key (V) step.
  const bf16* q_lane = qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + ((lane >> 4) & 1) * 8;
  const int k_lane = ((lane >> 4) & 1) * 8 + (lane & 7), k_col = ((lane >> 3) & 1) * 8;
  const int v_lane = ((lane >> 3) & 1) * 8 + (lane & 7), v_col = ((lane >> 4) & 1) * 8;

  float o[kD / 8][4];
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

  for (int kt = 0; kt < num_tiles; ++kt) {
    const int buf = kt & 1;
    __syncthreads();  // tile kt - 1 (buffer buf ^ 1) is no longer read; Q is in shared memory
    if (kt + 1 < num_tiles) load_tile(kt + 1, buf ^ 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();  // every thread's copies of tile kt have landed
    const bf16* ks = kvs + 2 * buf * kTileElems;
    const bf16* vs = ks + kTileElems;

    // S = Q K^T: this warp's 16 rows x 64 keys, as 8 n-tiles of 16x8.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      LdMatrixX4(a, q_lane + kk * 16);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        LdMatrixX4(b, ks + (np * 16 + k_lane) * kStride + kk * 16 + k_col);
        MmaBf16(s[2 * np], a, b[0], b[1]);
        MmaBf16(s[2 * np + 1], a, b[2], b[3]);
      }
    }

    // Mask, scale and the online softmax: the wgmma kernels' code, on the same fragment layout (n-tile nt's
    // accumulators are s[nt][0..3] here, s[4nt + 0..3] there).
    float alpha_a, alpha_b;
    PrefillTileSoftmax<kPrefillKeys>(p, reinterpret_cast<float(&)[kPrefillKeys / 2]>(s), kt, ctx,
                                     num_keys, seen_by_all, tqa, tqb, va, vb, t, s_kpos[buf], ma, mb, la, lb,
                                     alpha_a, alpha_b);
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
      const bf16* vrow = vs + (kk * 16 + v_lane) * kStride + v_col;
#pragma unroll
      for (int dt = 0; dt < kD / 8; dt += 2) {
        uint32_t b[4];
        LdMatrixX4Trans(b, vrow + dt * 8);
        MmaBf16(o[dt], a, b[0], b[1]);
        MmaBf16(o[dt + 1], a, b[2], b[3]);
      }
    }
  }

  PrefillStoreRows<kD>(p, h, row0 + ra, row0 + rb, tqa, tqb, va, vb, t,
                       reinterpret_cast<const float(&)[kD / 2]>(o), la, lb);
}

// ---- The same on Hopper: wgmma (sm_90a; head_dim 64 and 128) ---------------------------------------------------
// PrefillKernel's tiles, loads and softmax with 128 query rows per CTA: two warpgroups of 64 rows share each K/V tile
// (half the tile traffic per FLOP). Per warpgroup and tile: S (64 rows x 64 keys) = 8 MMAs of m64n64k16 with Q and K
// from shared memory (K-major, 128-byte swizzle: wgmma.cuh), and O += P V
// = 4 MMAs of m64n{kD}k16 with P from registers (the S accumulators repacked as A fragments, as PrefillKernel does)
// and V MN-major from shared memory (its key rows as stored: the same swizzled layout as K). The accumulators have
// PrefillKernel's fragment layout per 8-column n-tile, so the mask and the online softmax are the same code.
constexpr int kWgPrefillRows = 128;  // query rows per CTA: two warpgroups of 64 share each K/V tile
constexpr int kWgPrefillThreads = 256;
constexpr int kWgPrefillStages = 2;  // K/V tiles in shared memory: one in flight while one is consumed

template <int kD>
constexpr size_t PrefillWgmmaSharedBytes() {  // + 1 KB to align the operand blocks; Q, then the K/V stages
  return 1024 + (kWgPrefillRows + 2 * kWgPrefillStages * static_cast<size_t>(kPrefillKeys)) * kD * sizeof(bf16);
}

// One warpgroup's 64 query rows against one K/V tile of kKeys keys in swizzled shared memory, in three steps the
// kernels schedule: the scores' MMAs, the softmax, the P V MMAs. Per thread: rows ra and rb = ra + 8 of the
// group (token tqa / tqb, valid va / vb); scores s[4nt + 0..1] = row ra, keys 8nt + 2t ..; s[4nt + 2..3] = row rb.
//
// Issues S = Q K^T for a 64-key tile (q_addr: the group's Q rows; k_addr: the tile's K blocks); the caller commits
// and waits.
template <int kD>
__device__ __forceinline__ void WgmmaPrefillScores(float (&s)[32], uint32_t q_addr, uint32_t k_addr) {
  constexpr uint32_t kQBlock = kWgPrefillRows * 128;
  constexpr uint32_t kBlock = kPrefillKeys * 128;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    WgmmaM64N64K16(s, WgmmaDescriptor(q_addr + (kk / 4) * kQBlock + (kk % 4) * 32),
                   WgmmaDescriptor(k_addr + (kk / 4) * kBlock + (kk % 4) * 32), kk > 0);
  }
}

// The same with the group's Q rows in registers (qa[kk]: the A fragment of k-step kk), kKeys = 128.
template <int kD>
__device__ __forceinline__ void WgmmaPrefillScoresRegQ(float (&s)[64], const uint32_t (&qa)[kD / 16][4],
                                                       uint32_t k_addr) {
  constexpr uint32_t kBlock = 128 * 128;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    WgmmaRegAM64N128K16(s, qa[kk], WgmmaDescriptor(k_addr + (kk / 4) * kBlock + (kk % 4) * 32), kk > 0);
  }
}

template <int kD>
__device__ __forceinline__ void RescalePrefillRows(float (&o)[kD / 2], float alpha_a, float alpha_b) {
#pragma unroll
  for (int i = 0; i < kD / 2; i += 4) {
    o[i] *= alpha_a;
    o[i + 1] *= alpha_a;
    o[i + 2] *= alpha_b;
    o[i + 3] *= alpha_b;
  }
}

// P (64 x kKeys, the softmax's s) as the A fragments of the P V MMAs, 16 keys per k-step.
template <int kKeys>
__device__ __forceinline__ void PackPrefillP(const float (&s)[kKeys / 2], uint32_t (&a)[kKeys / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[kk][i] = PackBf16x2(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
  }
}

// Issues O += P V (v_addr: the tile's V blocks; V's k-step kk starts at key row 16kk); the caller commits and waits.
template <int kD, int kKeys>
__device__ __forceinline__ void WgmmaPrefillPv(float (&o)[kD / 2], const uint32_t (&a)[kKeys / 16][4],
                                               uint32_t v_addr) {
  constexpr uint32_t kBlock = kKeys * 128;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    WgmmaRegATransB<kD>(o, a[kk], WgmmaDescriptor(v_addr + kk * 16 * 128, kBlock), true);
  }
}

// The three steps back to back, each MMA waited for: `scores(s)` issues the tile's S = Q K^T (Q in shared memory or
// in registers, kKeys keys), then the softmax and O += P V (v_addr: the tile's V blocks).
template <int kD, int kKeys, typename Scores>
__device__ __forceinline__ void WgmmaPrefillTile(const PrefillParams& p, Scores scores, uint32_t v_addr, int kt,
                                                 int ctx, int num_keys, int seen_by_all, int tqa, int tqb, bool va,
                                                 bool vb, int t, const int64_t* kpos, float (&o)[kD / 2], float& ma,
                                                 float& mb, float& la, float& lb) {
  float s[kKeys / 2];
  WgmmaFence();
  scores(s);
  WgmmaCommit();
  WgmmaWait<0>();
  WgmmaFenceOperands(s);
  float alpha_a, alpha_b;
  PrefillTileSoftmax<kKeys>(p, s, kt, ctx, num_keys, seen_by_all, tqa, tqb, va, vb, t, kpos, ma, mb, la, lb, alpha_a,
                            alpha_b);
  RescalePrefillRows<kD>(o, alpha_a, alpha_b);
  uint32_t a[kKeys / 16][4];
  PackPrefillP<kKeys>(s, a);
  WgmmaFence();
  WgmmaPrefillPv<kD, kKeys>(o, a, v_addr);
  WgmmaCommit();
  WgmmaWait<0>();
  WgmmaFenceOperands(o);
}

// grid: (ceil(n * group / 128), hkv); block: 256; dynamic shared memory PrefillWgmmaSharedBytes<kD>().
template <int kD>
static __global__ void __launch_bounds__(kWgPrefillThreads, 2) PrefillWgmmaKernel(PrefillParams p) {
#if LIVEKV_HAS_WGMMA
  static_assert(kD == 64 || kD == 128, "head_dim 64 or 128");
  constexpr int kChunks = kD / 8;                     // 16-byte chunks per row
  constexpr uint32_t kQBlock = kWgPrefillRows * 128;  // one 64-element column block of Q's rows
  constexpr uint32_t kBlock = kPrefillKeys * 128;     // ... of a K or V tile
  constexpr uint32_t kTileBytes = (kD / 64) * kBlock;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (SharedAddress(smem_raw) & 1023)) & 1023);
  unsigned char* qs = smem;
  unsigned char* kvs = smem + (kD / 64) * kQBlock;  // stage b: K at kvs + 2b * kTileBytes, V after it
  __shared__ int64_t s_kpos[kWgPrefillStages][kPrefillKeys];

  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = warp >> 2, wq = warp & 3;  // warpgroup, warp within it
  const int g = lane >> 2, t = lane & 3;
  const int64_t total_rows = static_cast<int64_t>(p.n) * p.group;
  // Row tiles in reverse launch order: the last rows see the most keys, so the longest CTAs start first.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kWgPrefillRows;

  const int run_lo = p.table.slot_runs[h], run_hi = p.table.slot_runs[h + 1];
  const int ctx = p.table.slot_tokens[h];
  const int64_t last_row = min(row0 + kWgPrefillRows - 1, total_rows - 1);
  // Key and token indices fit int32 (the plan's token counts are int32): fewer registers than int64 in the loop.
  const int num_keys = ctx + static_cast<int>(last_row / p.group) + 1;
  const int num_tiles = (num_keys + kPrefillKeys - 1) / kPrefillKeys;
  const int first_token = static_cast<int>(row0 / p.group);
  const int seen_by_all = p.window > 0 || row0 + kWgPrefillRows > total_rows ? 0 : ctx + first_token + 1;

  auto load_tile = [&](int kt, int buf) {
    unsigned char* kd = kvs + 2 * buf * kTileBytes;
    LoadPrefillTile<kD, kWgPrefillThreads / 32>(
        p, h, run_lo, run_hi, ctx, num_keys, kt, kd, kd + kTileBytes, s_kpos[buf],
        [](int row, int chunk) { return (chunk / 8) * kBlock + Swizzle128(row, chunk % 8); });
  };
#pragma unroll
  for (int st = 0; st < kWgPrefillStages - 1; ++st) {  // one commit group per tile, empty past the last
    if (st < num_tiles) load_tile(st, st);
    CpAsyncCommit();
  }

  for (int i = tid; i < kWgPrefillRows * kChunks; i += kWgPrefillThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t R = row0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (R < total_rows) {
      const int64_t tq = R / p.group, hh = R % p.group;
      val = *reinterpret_cast<const uint4*>(p.q + (tq * p.hq + h * p.group + hh) * kD + c * 8);
    }
    *reinterpret_cast<uint4*>(qs + (c / 8) * kQBlock + Swizzle128(r, c % 8)) = val;
  }
  FenceProxyAsync();  // Q's stores, for the MMAs (published by the loop's first barriers)

  const int ra = group * 64 + wq * 16 + g, rb = ra + 8;  // this thread's two rows within the CTA's
  const bool va = row0 + ra < total_rows, vb = row0 + rb < total_rows;
  const int tqa = static_cast<int>((row0 + ra) / p.group), tqb = static_cast<int>((row0 + rb) / p.group);
  const uint32_t q_addr = SharedAddress(qs) + group * 64 * 128, kv_addr = SharedAddress(kvs);  // this group's rows

  float o[kD / 2];  // n-tile dt (columns 8dt ..): o[4dt + 0..1] row ra, o[4dt + 2..3] row rb
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

  for (int kt = 0; kt < num_tiles; ++kt) {
    const int buf = static_cast<int>(kt % kWgPrefillStages);
    __syncthreads();  // tile kt - 1's stage, refilled next, is no longer read
    if (kt + kWgPrefillStages - 1 < num_tiles) {
      load_tile(kt + kWgPrefillStages - 1, static_cast<int>((kt + kWgPrefillStages - 1) % kWgPrefillStages));
    }
    CpAsyncCommit();
    CpAsyncWait<kWgPrefillStages - 1>();
    FenceProxyAsync();
    __syncthreads();  // every thread's copies of tile kt have landed, visible to the MMAs
    const uint32_t k_addr = kv_addr + 2 * buf * kTileBytes, v_addr = k_addr + kTileBytes;

    WgmmaPrefillTile<kD, kPrefillKeys>(
        p, [&](float (&s)[kPrefillKeys / 2]) { WgmmaPrefillScores<kD>(s, q_addr, k_addr); }, v_addr, kt, ctx, num_keys,
        seen_by_all, tqa, tqb, va, vb, t, s_kpos[buf], o, ma, mb, la, lb);
  }

  PrefillStoreRows<kD>(p, h, row0 + ra, row0 + rb, tqa, tqb, va, vb, t, o, la, lb);
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

// ---- Warp-specialized (sm_90a): a producer warpgroup loads, two consumer warpgroups compute ---------------------
// PrefillWgmmaKernel's 128 query rows per CTA and per-tile arithmetic, with the loads taken off the computing warps,
// tiles of 128 keys and Q in registers:
// - warpgroup 0 (the producer) looks the K/V rows up (a lane per row) and copies each tile by cp.async into one of
//   kWsPrefillStages stages. Each producer thread arrives twice on the stage's `full` mbarrier (256 arrivals per
//   phase): once when its copies have landed (cp.async.mbarrier.arrive) and once after writing the keys' positions.
//   It waits for the stage's `empty` mbarrier (lane 0 of each consumer warp, once its MMAs have read the tile)
//   before refilling it, and never for its own copies.
// - warpgroups 1 and 2 (the consumers) own 64 query rows each, held as the A fragments of S = Q K^T (m64n128k16 with
//   A from registers, K from shared memory); per tile they wait for `full`, compute (the scores, the softmax, O += P
//   V) and release the stage. No CTA-wide barrier in the loop.
// - The producer gives back registers (setmaxnreg) so the consumers hold Q, S, P and O without spilling (ptxas
//   allocates the consumer code up to kWsConsumerRegisters): one CTA of 384 threads per SM.
// Measured and dropped (docs/gpu.md): FlashAttention-3's overlap of tile k's scores with tile k - 1's P V inside a
// warpgroup, with and without the two consumers taking turns (ping-pong); tiles of 64 keys in 4 or 5 stages; three
// stages of 128 keys; Q in shared memory.
constexpr int kWsPrefillThreads = 384;
constexpr int kWsPrefillKeys = 128;
constexpr int kWsPrefillStages = 2;  // 2 x 64 KB of K/V tiles (head_dim 128)
constexpr int kWsProducerRegisters = 56;
constexpr int kWsConsumerRegisters = 224;  // 128 x 56 + 256 x 224 <= 64 K registers

template <int kD>
constexpr size_t PrefillWsSharedBytes() {  // + 1 KB to align the operand blocks
  return 1024 + 2 * kWsPrefillStages * static_cast<size_t>(kWsPrefillKeys) * kD * sizeof(bf16);
}

// grid: (ceil(n * group / 128), hkv); block: 384; dynamic shared memory PrefillWsSharedBytes<kD>().
template <int kD>
static __global__ void __launch_bounds__(kWsPrefillThreads, 1) PrefillWsKernel(PrefillParams p) {
#if LIVEKV_HAS_WGMMA
  static_assert(kD == 64 || kD == 128, "head_dim 64 or 128");
  constexpr int kKeys = kWsPrefillKeys, kStages = kWsPrefillStages;
  constexpr uint32_t kBlock = kKeys * 128;
  constexpr uint32_t kTileBytes = (kD / 64) * kBlock;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* kvs = smem_raw + ((1024 - (SharedAddress(smem_raw) & 1023)) & 1023);  // stage b: K, then V
  __shared__ int64_t s_kpos[kStages][kKeys];
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages];

  const int h = blockIdx.y;
  const int64_t total_rows = static_cast<int64_t>(p.n) * p.group;
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kWgPrefillRows;  // longest CTAs first
  const int run_lo = p.table.slot_runs[h], run_hi = p.table.slot_runs[h + 1];
  const int ctx = p.table.slot_tokens[h];
  const int64_t last_row = min(row0 + kWgPrefillRows - 1, total_rows - 1);
  const int num_keys = ctx + static_cast<int>(last_row / p.group) + 1;
  const int num_tiles = (num_keys + kKeys - 1) / kKeys;

  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      MbarrierInit(&full[st], 2 * 128);
      MbarrierInit(&empty[st], 2 * 4);
    }
    FenceMbarrierInit();
  }
  __syncthreads();
  const int wg = WarpgroupIndex();

  if (wg == 0) {  // the producer
    WarpgroupRegistersDecrease<kWsProducerRegisters>();
    for (int kt = 0; kt < num_tiles; ++kt) {
      const int st = kt % kStages;
      if (kt >= kStages) MbarrierWait(&empty[st], static_cast<uint32_t>((kt / kStages - 1) & 1));
      unsigned char* kd = kvs + 2 * st * kTileBytes;
      LoadPrefillTile<kD, 4, kKeys>(
          p, h, run_lo, run_hi, ctx, num_keys, kt, kd, kd + kTileBytes, s_kpos[st],
          [](int row, int chunk) { return (chunk / 8) * kBlock + Swizzle128(row, chunk % 8); });
      MbarrierArriveOnCpAsync(&full[st]);
      MbarrierArrive(&full[st]);
    }
    CpAsyncWait<0>();  // no copy outlives its thread
    return;
  }

  // The consumers: warpgroup c = wg - 1 owns the CTA's rows 64c .. 64c + 63; this thread rows ra and rb = ra + 8.
  WarpgroupRegistersIncrease<kWsConsumerRegisters>();
  const int c = wg - 1;
  const int lane = threadIdx.x & 31, wq = (threadIdx.x >> 5) & 3;
  const int g = lane >> 2, t = lane & 3;
  const int first_token = static_cast<int>(row0 / p.group);
  const int seen_by_all = p.window > 0 || row0 + kWgPrefillRows > total_rows ? 0 : ctx + first_token + 1;
  const int ra = c * 64 + wq * 16 + g, rb = ra + 8;
  const bool va = row0 + ra < total_rows, vb = row0 + rb < total_rows;
  const int tqa = static_cast<int>((row0 + ra) / p.group), tqb = static_cast<int>((row0 + rb) / p.group);
  const uint32_t kv_addr = SharedAddress(kvs);
  // Q's A fragments: qa[kk] = rows ra / rb, columns 16kk + 2t (+ 1) and 16kk + 2t + 8 (+ 1).
  uint32_t qa[kD / 16][4];
  {
    const bf16* qra = p.q + (static_cast<int64_t>(tqa) * p.hq + h * p.group + (row0 + ra) % p.group) * kD + 2 * t;
    const bf16* qrb = p.q + (static_cast<int64_t>(tqb) * p.hq + h * p.group + (row0 + rb) % p.group) * kD + 2 * t;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      qa[kk][0] = va ? LoadU32(qra + kk * 16) : 0u;
      qa[kk][1] = vb ? LoadU32(qrb + kk * 16) : 0u;
      qa[kk][2] = va ? LoadU32(qra + kk * 16 + 8) : 0u;
      qa[kk][3] = vb ? LoadU32(qrb + kk * 16 + 8) : 0u;
    }
  }

  float o[kD / 2];
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;
  for (int kt = 0; kt < num_tiles; ++kt) {
    const int st = kt % kStages;
    MbarrierWait(&full[st], static_cast<uint32_t>((kt / kStages) & 1));
    FenceProxyAsync();  // the producer's copies, seen through the barrier, before the MMAs read them
    const uint32_t k_addr = kv_addr + 2 * st * kTileBytes, v_addr = k_addr + kTileBytes;
    WgmmaPrefillTile<kD, kKeys>(
        p, [&](float (&s)[kKeys / 2]) { WgmmaPrefillScoresRegQ<kD>(s, qa, k_addr); }, v_addr, kt, ctx, num_keys,
        seen_by_all, tqa, tqb, va, vb, t, s_kpos[st], o, ma, mb, la, lb);
    if (lane == 0) MbarrierArrive(&empty[st]);
  }
  PrefillStoreRows<kD>(p, h, row0 + ra, row0 + rb, tqa, tqb, va, vb, t, o, la, lb);
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_ATTENTION_PREFILL_CUH_
