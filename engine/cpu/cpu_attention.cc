// Flash-style blocked attention (FlashAttention-2's loop order, on a CPU core).
//
// Work is cut into tasks of (KV head, query tile): a query tile is a few consecutive chunk rows times every query
// head of the KV group, so each key row is loaded once for all the heads that share it. A task walks the head's
// keys (its context runs, then the chunk's own keys) in tiles of kKeyTile and keeps, per query, a running
// maximum m, a running sum l and an unnormalised output O (the online softmax), so no score vector of the full
// context length is ever materialised. Per key tile:
//   S^T = K · Q^T  scores, [keys][queries]: vectorised across queries, so the softmax statistics of 8 queries sit
//                  in one register and no horizontal reductions are needed;
//   P^T = 2^(S^T - m_new), l = l·2^(m - m_new) + Σ P, m = m_new;
//   O^T = O^T · 2^(m - m_new) + V^T · P^T.
// Queries are pre-multiplied by scale·log2(e), so the exponentials are base-2 (one polynomial, no range
// reduction by ln 2). Key tiles a whole query tile cannot see (causal future, beyond the sliding window) are
// skipped from their position bounds; fully visible ones are used without per-element tests.
//
// When there are fewer tasks than threads (decode: one query row), each task's key tiles are split among several
// sub-tasks whose (m, l, O) are merged at the end.
#include "engine/cpu/cpu_attention.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LIVEKV_ATTENTION_AVX2 1
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// 8 lanes of fp32: AVX2 + FMA intrinsics, or a plain array the compiler may vectorise. Only what the kernel uses.

#ifdef LIVEKV_ATTENTION_AVX2
using F8 = __m256;
inline F8 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline void Store8(float* p, F8 x) { _mm256_storeu_ps(p, x); }
inline F8 Splat8(float x) { return _mm256_set1_ps(x); }
inline F8 Broadcast8(const float* p) { return _mm256_broadcast_ss(p); }
inline F8 Add8(F8 a, F8 b) { return _mm256_add_ps(a, b); }
inline F8 Sub8(F8 a, F8 b) { return _mm256_sub_ps(a, b); }
inline F8 Mul8(F8 a, F8 b) { return _mm256_mul_ps(a, b); }
// The second operand is returned when either is NaN.
inline F8 Max8(F8 a, F8 b) { return _mm256_max_ps(a, b); }
inline F8 Fma8(F8 a, F8 b, F8 c) { return _mm256_fmadd_ps(a, b, c); }
inline F8 RoundToEven8(F8 x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integral n in [-127, 127]; 0 for n = -127.
inline F8 Pow2Int8(F8 n) {
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
}
#else
struct F8 {
  float x[8];
};
inline F8 Load8(const float* p) {
  F8 r;
  std::memcpy(r.x, p, sizeof(r.x));
  return r;
}
inline void Store8(float* p, F8 x) { std::memcpy(p, x.x, sizeof(x.x)); }
inline F8 Splat8(float v) {
  F8 r;
  for (float& e : r.x) e = v;
  return r;
}
inline F8 Broadcast8(const float* p) { return Splat8(*p); }
#define LIVEKV_F8_LANEWISE(name, expr)      \
  inline F8 name(F8 a, F8 b) {              \
    F8 r;                                   \
    for (int i = 0; i < 8; ++i) r.x[i] = expr; \
    return r;                               \
  }
LIVEKV_F8_LANEWISE(Add8, a.x[i] + b.x[i])
LIVEKV_F8_LANEWISE(Sub8, a.x[i] - b.x[i])
LIVEKV_F8_LANEWISE(Mul8, a.x[i] * b.x[i])
LIVEKV_F8_LANEWISE(Max8, a.x[i] > b.x[i] ? a.x[i] : b.x[i])  // b when either is NaN, as maxps
#undef LIVEKV_F8_LANEWISE
inline F8 Fma8(F8 a, F8 b, F8 c) {
  F8 r;
  for (int i = 0; i < 8; ++i) r.x[i] = std::fma(a.x[i], b.x[i], c.x[i]);
  return r;
}
inline F8 RoundToEven8(F8 v) {
  F8 r;
  for (int i = 0; i < 8; ++i) r.x[i] = std::nearbyint(v.x[i]);  // the default rounding mode: to nearest even
  return r;
}
inline F8 Pow2Int8(F8 n) {
  F8 r;
  for (int i = 0; i < 8; ++i) {
    const int32_t e = std::isnan(n.x[i]) ? 0 : static_cast<int32_t>(n.x[i]);  // NaN: p is NaN anyway
    const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
    std::memcpy(&r.x[i], &bits, 4);
  }
  return r;
}
#endif

// 2^x for x <= 0: a degree-6 minimax polynomial for 2^f on [-0.5, 0.5] (Cephes exp2f's) times 2^round(x).
// Relative error below 1e-7 on [-126, 0] (measured against exp2 in double); exactly 0 below -126.5, including
// -inf (masked scores); NaN stays NaN.
inline F8 Exp2(F8 x) {
  x = Max8(Splat8(-127.0f), x);
  const F8 n = RoundToEven8(x);
  const F8 f = Sub8(x, n);
  F8 p = Fma8(Splat8(1.535336188319500e-4f), f, Splat8(1.339887440266574e-3f));
  p = Fma8(p, f, Splat8(9.618437357674640e-3f));
  p = Fma8(p, f, Splat8(5.550332471162809e-2f));
  p = Fma8(p, f, Splat8(2.402264791363012e-1f));
  p = Fma8(p, f, Splat8(6.931472028550421e-1f));
  p = Fma8(p, f, Splat8(1.0f));
  return Mul8(p, Pow2Int8(n));
}

// Converts one row of d context elements to fp32.
void RowToF32(const void* src, DType type, int64_t d, float* dst) {
  const uint16_t* h = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (type == DType::kBF16) {
#ifdef LIVEKV_ATTENTION_AVX2
    for (; i + 8 <= d; i += 8) {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
#endif
    for (; i < d; ++i) dst[i] = BF16ToF32(h[i]);
  } else {
#ifdef __F16C__
    for (; i + 8 <= d; i += 8) {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    }
#endif
    for (; i < d; ++i) dst[i] = F16ToF32(h[i]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Micro-kernels. Matrices whose second index runs over queries ([x][mp]) are transposed so that 8 consecutive
// queries fill one vector; mp, the padded query count of a tile, is a multiple of 8. QV is the number of query
// vectors (8 queries each) a call covers, R the number of rows it broadcasts from.

// st[r][0 .. 8 QV) = Σ_t krows[r][t] · qt[t][0 .. 8 QV) for r < R: the scores of R keys.
template <int R, int QV>
inline void ScoreBlock(const float* const* krows, const float* qt, int64_t mp, int64_t d, float* st) {
  F8 acc[R][QV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[r][v] = Splat8(0.0f);
  }
  const float* k[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) k[r] = krows[r];
  for (int64_t t = 0; t < d; ++t) {
    F8 q[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) q[v] = Load8(qt + t * mp + 8 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const F8 b = Broadcast8(k[r] + t);
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[r][v] = Fma8(b, q[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) Store8(st + r * mp + 8 * v, acc[r][v]);
  }
}

// ot[r][0 .. 8 QV) = ot[r][..] · alpha[..] + Σ_{j < count} vrows[j][t0 + r] · pt[j][..] for r < R: R output
// dimensions (starting at t0) of 8 QV queries, rescaled for the new running maximum and accumulated.
template <int R, int QV>
inline void ValueBlock(const float* const* vrows, int64_t count, int64_t t0, const float* pt, int64_t mp,
                       const float* alpha, float* ot) {
  F8 acc[R][QV];
  F8 a[QV];
#pragma GCC unroll 4
  for (int v = 0; v < QV; ++v) a[v] = Load8(alpha + 8 * v);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[r][v] = Mul8(Load8(ot + r * mp + 8 * v), a[v]);
  }
  for (int64_t j = 0; j < count; ++j) {
    F8 p[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) p[v] = Load8(pt + j * mp + 8 * v);
    const float* row = vrows[j] + t0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const F8 b = Broadcast8(row + r);
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[r][v] = Fma8(b, p[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) Store8(ot + r * mp + 8 * v, acc[r][v]);
  }
}

// ValueBlock for the last `rem` (< R) output dimensions.
template <int R, int QV>
inline void ValueTail(int rem, const float* const* vrows, int64_t count, int64_t t0, const float* pt, int64_t mp,
                      const float* alpha, float* ot) {
  if constexpr (R > 0) {
    if (rem == R) {
      ValueBlock<R, QV>(vrows, count, t0, pt, mp, alpha, ot);
    } else {
      ValueTail<R - 1, QV>(rem, vrows, count, t0, pt, mp, alpha, ot);
    }
  }
}

// Register blocking: keys per score block and dimensions per value block, for 2 and for 1 query vectors. 12
// accumulators leave room for the operands in the 16 vector registers.
constexpr int kScoreRows2 = 6, kScoreRows1 = 12;
constexpr int kValueRows2 = 6, kValueRows1 = 12;
constexpr int64_t kKeyTile = 48;  // a multiple of kScoreRows1 and kScoreRows2
constexpr int64_t kTargetQueries = 64;  // queries (rows × heads of a group) a query tile aims for
// Fewer key tiles per split would cost more in merging and waking threads than the split saves.
constexpr int64_t kMinTilesPerSplit = 8;
static_assert(kKeyTile % kScoreRows1 == 0 && kKeyTile % kScoreRows2 == 0, "key tile must hold whole blocks");

// ---------------------------------------------------------------------------------------------------------------
// Planning: which rows a KV head reads, cut into key tiles.

// A stretch of consecutive K/V rows of one KV head: a context run or the chunk's own keys.
struct Segment {
  const char* k;
  const char* v;
  int64_t stride;  // bytes from one row to the next
  int64_t n;
  int64_t first_position;
  DType dtype;
  bool causal;  // the chunk's own keys: visible only to queries at or after their position
};

// Up to kKeyTile consecutive keys of a head, from row `row` of segment `segment` on, and their position bounds:
// enough to tell, without per-element tests, whether a query tile sees none, all or some of them.
struct KeyTile {
  int32_t segment;
  int32_t count;
  int64_t row;
  int64_t min_pos, max_pos;  // over all keys (meaningful with a sliding window, or for causal keys)
  int64_t max_causal_pos;    // over the chunk's own keys; the lowest int64 when there are none
  bool all_causal;
};

struct HeadPlan {
  std::vector<Segment> segments;
  std::vector<KeyTile> tiles;
};

HeadPlan PlanHead(const AttentionArgs& a, int64_t g) {
  const int64_t n = a.q.dim(0), d = a.q.dim(2), hkv = a.k.dim(1);
  HeadPlan plan;
  if (a.context != nullptr) {
    const int64_t row_bytes = d * static_cast<int64_t>(DTypeSize(a.context->dtype));
    for (const KvRun& run : a.context->heads[g]) {
      if (run.n == 0) continue;
      plan.segments.push_back({static_cast<const char*>(run.k), static_cast<const char*>(run.v), row_bytes, run.n,
                               run.first_position, a.context->dtype, false});
    }
  }
  plan.segments.push_back({reinterpret_cast<const char*>(a.k.as<float>() + g * d),
                           reinterpret_cast<const char*>(a.v.as<float>() + g * d),
                           hkv * d * static_cast<int64_t>(sizeof(float)), n, a.pos0, DType::kF32, true});
  KeyTile tile{};
  tile.count = 0;
  for (size_t s = 0; s < plan.segments.size(); ++s) {
    const Segment& seg = plan.segments[s];
    for (int64_t row = 0; row < seg.n;) {
      if (tile.count == 0) {
        tile.segment = static_cast<int32_t>(s);
        tile.row = row;
        tile.min_pos = std::numeric_limits<int64_t>::max();
        tile.max_pos = std::numeric_limits<int64_t>::lowest();
        tile.max_causal_pos = std::numeric_limits<int64_t>::lowest();
        tile.all_causal = true;
      }
      const int64_t take = std::min<int64_t>(kKeyTile - tile.count, seg.n - row);
      const int64_t lo = seg.first_position + row, hi = lo + take - 1;
      tile.min_pos = std::min(tile.min_pos, lo);
      tile.max_pos = std::max(tile.max_pos, hi);
      if (seg.causal) {
        tile.max_causal_pos = std::max(tile.max_causal_pos, hi);
      } else {
        tile.all_causal = false;
      }
      tile.count += static_cast<int32_t>(take);
      row += take;
      if (tile.count == kKeyTile) {
        plan.tiles.push_back(tile);
        tile.count = 0;
      }
    }
  }
  if (tile.count > 0) plan.tiles.push_back(tile);
  return plan;
}

enum class Visibility { kNone, kAll, kSome };

// Whether queries at positions [qlo, qhi] see none, all or some keys of the tile. kNone and kAll are exact
// claims; kSome may be returned for tiles that are in fact all or none (then masked per element).
Visibility Classify(const KeyTile& t, int64_t qlo, int64_t qhi, int64_t window) {
  if (window > 0 && qlo - t.max_pos >= window) return Visibility::kNone;
  if (t.all_causal && t.min_pos > qhi) return Visibility::kNone;
  const bool in_window = window <= 0 || qhi - t.min_pos < window;
  return in_window && t.max_causal_pos <= qlo ? Visibility::kAll : Visibility::kSome;
}

// ---------------------------------------------------------------------------------------------------------------
// One task's state and scratch.

// Running softmax statistics and unnormalised output of the mp queries of a query tile.
struct QueryState {
  float* ot;  // [d][mp]
  float* m;   // [mp] running maximum of the scores (base 2), -inf before any visible key
  float* l;   // [mp] running sum of 2^(score - m)
};

// Per-worker scratch, sized for the largest query tile. Everything a task reads is rewritten before use.
struct Workspace {
  Workspace(int64_t d, int64_t mp)
      : qt(d * mp), st(kKeyTile * mp), alpha(mp), qpos(mp), ot(d * mp), m(mp), l(mp), kbuf(kKeyTile * d),
        vbuf(kKeyTile * d) {}
  std::vector<float> qt;       // [d][mp] the tile's queries, transposed, times scale·log2(e); padding 0
  std::vector<float> st;       // [kKeyTile][mp] scores of one key tile, then their probabilities
  std::vector<float> alpha;    // [mp] 2^(m_old - m_new) of the current key tile
  std::vector<int64_t> qpos;   // [mp] position of each query
  std::vector<float> ot, m, l;  // the QueryState of a task that does not keep it elsewhere
  std::vector<float> kbuf, vbuf;  // [kKeyTile][d] fp32 copies of 16-bit context rows
  const float* krows[kKeyTile];
  const float* vrows[kKeyTile];
  int64_t kpos[kKeyTile];
  bool kcausal[kKeyTile];
};

// The shape of the whole call.
struct Problem {
  const AttentionArgs* a;
  int64_t n, hq, d, hkv, group;
  int64_t rows_per_tile, query_tiles, mp;  // mp: padded query count of a full query tile
  float qscale;                             // scale · log2(e)
};

// Rows [r0, r1) of the chunk for KV head g.
void PackQueries(const Problem& p, int64_t g, int64_t r0, int64_t r1, int64_t mp, Workspace* ws) {
  const float* q = p.a->q.as<float>();
  std::fill(ws->qt.begin(), ws->qt.begin() + p.d * mp, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t h = 0; h < p.group; ++h) {
      const int64_t i = (r - r0) * p.group + h;
      const float* src = q + (r * p.hq + g * p.group + h) * p.d;
      for (int64_t t = 0; t < p.d; ++t) ws->qt[t * mp + i] = src[t] * p.qscale;
    }
  }
  for (int64_t i = 0; i < mp; ++i) ws->qpos[i] = p.a->pos0 + std::min(r0 + i / p.group, r1 - 1);
}

// Points krows/vrows at the tile's rows, converting 16-bit rows into the workspace. krows is padded to a whole
// number of score blocks with copies of its first row (their scores are computed and ignored).
void GatherTile(const HeadPlan& plan, const KeyTile& tile, int64_t d, bool positions, Workspace* ws) {
  int64_t j = 0;
  for (size_t s = tile.segment; j < tile.count; ++s) {
    const Segment& seg = plan.segments[s];
    const int64_t row0 = s == static_cast<size_t>(tile.segment) ? tile.row : 0;
    const int64_t take = std::min<int64_t>(tile.count - j, seg.n - row0);
    for (int64_t r = row0; r < row0 + take; ++r, ++j) {
      const char* k = seg.k + r * seg.stride;
      const char* v = seg.v + r * seg.stride;
      if (seg.dtype == DType::kF32) {
        ws->krows[j] = reinterpret_cast<const float*>(k);
        ws->vrows[j] = reinterpret_cast<const float*>(v);
      } else {
        float* kd = ws->kbuf.data() + j * d;
        float* vd = ws->vbuf.data() + j * d;
        RowToF32(k, seg.dtype, d, kd);
        RowToF32(v, seg.dtype, d, vd);
        ws->krows[j] = kd;
        ws->vrows[j] = vd;
      }
      if (positions) {
        ws->kpos[j] = seg.first_position + r;
        ws->kcausal[j] = seg.causal;
      }
    }
  }
  const int64_t padded = (tile.count + kScoreRows1 - 1) / kScoreRows1 * kScoreRows1;
  for (; j < padded; ++j) ws->krows[j] = ws->krows[0];
}

// Folds key tiles [t0, t1) of plan into the state of the queries packed in ws (mp of them).
void AttendTiles(const Problem& p, const HeadPlan& plan, size_t t0, size_t t1, int64_t qlo, int64_t qhi, int64_t mp,
                 Workspace* ws, const QueryState& state) {
  const int64_t d = p.d, window = p.a->sliding_window;
  float* st = ws->st.data();
  const float* qt = ws->qt.data();
  for (size_t kt = t0; kt < t1; ++kt) {
    const KeyTile& tile = plan.tiles[kt];
    const Visibility vis = Classify(tile, qlo, qhi, window);
    if (vis == Visibility::kNone) continue;
    GatherTile(plan, tile, d, vis == Visibility::kSome, ws);
    const int64_t count = tile.count;

    // Scores.
    int64_t i0 = 0;
    for (; i0 + 16 <= mp; i0 += 16) {
      for (int64_t j0 = 0; j0 < count; j0 += kScoreRows2) {
        ScoreBlock<kScoreRows2, 2>(ws->krows + j0, qt + i0, mp, d, st + j0 * mp + i0);
      }
    }
    if (i0 < mp) {
      for (int64_t j0 = 0; j0 < count; j0 += kScoreRows1) {
        ScoreBlock<kScoreRows1, 1>(ws->krows + j0, qt + i0, mp, d, st + j0 * mp + i0);
      }
    }
    if (vis == Visibility::kSome) {
      const float neg_inf = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < count; ++j) {
        const int64_t kpos = ws->kpos[j];
        const bool causal = ws->kcausal[j];
        float* row = st + j * mp;
        for (int64_t i = 0; i < mp; ++i) {
          const int64_t qpos = ws->qpos[i];
          if ((causal && kpos > qpos) || (window > 0 && qpos - kpos >= window)) row[i] = neg_inf;
        }
      }
    }

    // Online softmax, 8 queries at a time.
    for (int64_t c = 0; c < mp; c += 8) {
      F8 mx0 = Splat8(-std::numeric_limits<float>::infinity()), mx1 = mx0;
      int64_t j = 0;
      for (; j + 2 <= count; j += 2) {
        mx0 = Max8(mx0, Load8(st + j * mp + c));
        mx1 = Max8(mx1, Load8(st + (j + 1) * mp + c));
      }
      if (j < count) mx0 = Max8(mx0, Load8(st + j * mp + c));
      const F8 m_old = Load8(state.m + c);
      const F8 m_new = Max8(m_old, Max8(mx0, mx1));
      // A query that has seen no visible key yet keeps m = -inf; subtracting a finite stand-in keeps its
      // probabilities and alpha at exactly 0 instead of NaN.
      const F8 m_sub = Max8(m_new, Splat8(std::numeric_limits<float>::lowest()));
      const F8 alpha = Exp2(Sub8(m_old, m_sub));
      F8 sum0 = Splat8(0.0f), sum1 = sum0;
      for (j = 0; j + 2 <= count; j += 2) {
        const F8 e0 = Exp2(Sub8(Load8(st + j * mp + c), m_sub));
        const F8 e1 = Exp2(Sub8(Load8(st + (j + 1) * mp + c), m_sub));
        Store8(st + j * mp + c, e0);
        Store8(st + (j + 1) * mp + c, e1);
        sum0 = Add8(sum0, e0);
        sum1 = Add8(sum1, e1);
      }
      if (j < count) {
        const F8 e0 = Exp2(Sub8(Load8(st + j * mp + c), m_sub));
        Store8(st + j * mp + c, e0);
        sum0 = Add8(sum0, e0);
      }
      Store8(state.l + c, Fma8(Load8(state.l + c), alpha, Add8(sum0, sum1)));
      Store8(state.m + c, m_new);
      Store8(ws->alpha.data() + c, alpha);
    }

    // O^T = O^T · alpha + V^T · P^T.
    const float* alpha = ws->alpha.data();
    for (i0 = 0; i0 + 16 <= mp; i0 += 16) {
      int64_t t = 0;
      for (; t + kValueRows2 <= d; t += kValueRows2) {
        ValueBlock<kValueRows2, 2>(ws->vrows, count, t, st + i0, mp, alpha + i0, state.ot + t * mp + i0);
      }
      if (t < d) {
        ValueTail<kValueRows2 - 1, 2>(static_cast<int>(d - t), ws->vrows, count, t, st + i0, mp, alpha + i0,
                                      state.ot + t * mp + i0);
      }
    }
    if (i0 < mp) {
      int64_t t = 0;
      for (; t + kValueRows1 <= d; t += kValueRows1) {
        ValueBlock<kValueRows1, 1>(ws->vrows, count, t, st + i0, mp, alpha + i0, state.ot + t * mp + i0);
      }
      if (t < d) {
        ValueTail<kValueRows1 - 1, 1>(static_cast<int>(d - t), ws->vrows, count, t, st + i0, mp, alpha + i0,
                                      state.ot + t * mp + i0);
      }
    }
  }
}

void ResetState(int64_t d, int64_t mp, const QueryState& s) {
  std::fill(s.ot, s.ot + d * mp, 0.0f);
  std::fill(s.m, s.m + mp, -std::numeric_limits<float>::infinity());
  std::fill(s.l, s.l + mp, 0.0f);
}

// out rows [r0, r1) of KV head g's query heads = O / l.
void WriteOutput(const Problem& p, int64_t g, int64_t r0, int64_t r1, int64_t mp, const QueryState& s) {
  float* out = p.a->out.as<float>();
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t h = 0; h < p.group; ++h) {
      const int64_t i = (r - r0) * p.group + h;
      const float inv = 1.0f / s.l[i];
      float* o = out + (r * p.hq + g * p.group + h) * p.d;
      for (int64_t t = 0; t < p.d; ++t) o[t] = s.ot[t * mp + i] * inv;
    }
  }
}

// Merges the states of one query tile's key splits into parts[0].
void MergeSplits(int64_t d, int64_t mp, const std::vector<QueryState>& parts) {
  const QueryState& into = parts[0];
  for (int64_t c = 0; c < mp; c += 8) {
    F8 m = Load8(into.m + c);
    for (size_t s = 1; s < parts.size(); ++s) m = Max8(m, Load8(parts[s].m + c));
    const F8 m_sub = Max8(m, Splat8(std::numeric_limits<float>::lowest()));
    F8 l = Splat8(0.0f);
    for (size_t s = 0; s < parts.size(); ++s) {
      const F8 w = Exp2(Sub8(Load8(parts[s].m + c), m_sub));
      l = Fma8(Load8(parts[s].l + c), w, l);
      for (int64_t t = 0; t < d; ++t) {
        const F8 o = Mul8(Load8(parts[s].ot + t * mp + c), w);
        Store8(into.ot + t * mp + c, s == 0 ? o : Add8(Load8(into.ot + t * mp + c), o));
      }
    }
    Store8(into.l + c, l);
    Store8(into.m + c, m);
  }
}

}  // namespace

absl::Status ValidateAttentionArgs(const AttentionArgs& a) {
  if (a.q.rank() != 3 || a.k.rank() != 3 || a.v.rank() != 3 || a.out.rank() != 3) {
    return absl::InvalidArgumentError("attention: q, k, v and out must have rank 3");
  }
  const int64_t n = a.q.dim(0), hq = a.q.dim(1), d = a.q.dim(2), hkv = a.k.dim(1);
  if (a.k.shape != a.v.shape || a.k.dim(0) != n || a.k.dim(2) != d) {
    return absl::InvalidArgumentError(absl::StrCat("attention: k ", ShapeToString(a.k.shape), " and v ",
                                                   ShapeToString(a.v.shape), " do not match q ",
                                                   ShapeToString(a.q.shape)));
  }
  if (a.out.shape != a.q.shape) {
    return absl::InvalidArgumentError(absl::StrCat("attention: out ", ShapeToString(a.out.shape),
                                                   " must equal q ", ShapeToString(a.q.shape)));
  }
  if (hkv <= 0 || hq % hkv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: query heads ", hq, " must be a multiple of KV heads ", hkv));
  }
  for (const TensorView* t : {&a.q, &a.k, &a.v, &a.out}) {
    if (t->dtype != DType::kF32) return absl::InvalidArgumentError("attention: CPU tensors must be fp32");
  }
  if (a.context != nullptr) {
    if (a.context->query_copy != nullptr && n != 1) {
      return absl::InvalidArgumentError(absl::StrCat("attention: a query copy is for one-row decode, saw ", n, " rows"));
    }
    if (static_cast<int64_t>(a.context->heads.size()) != hkv) {
      return absl::InvalidArgumentError(absl::StrCat("attention: context has ", a.context->heads.size(),
                                                     " KV heads, k has ", hkv));
    }
    const DType t = a.context->dtype;
    if (t != DType::kF32 && t != DType::kBF16 && t != DType::kF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: context dtype must be a float type, saw ", DTypeName(t)));
    }
    for (const auto& head : a.context->heads) {
      for (const KvRun& r : head) {
        if (r.n < 0 || (r.n > 0 && (r.k == nullptr || r.v == nullptr))) {
          return absl::InvalidArgumentError("attention: context run with a negative length or null rows");
        }
        if (a.sliding_window > 0 && r.first_position < 0) {
          return absl::InvalidArgumentError("attention: a sliding window needs positional context runs");
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuAttention(const AttentionArgs& a, ThreadPool* pool) {
  absl::Status valid = ValidateAttentionArgs(a);
  if (!valid.ok()) return valid;
  if (a.context != nullptr && a.context->query_copy != nullptr) {
    std::memcpy(a.context->query_copy, a.q.data, static_cast<size_t>(a.q.dim(1) * a.q.dim(2)) * sizeof(float));
  }
  Problem p;
  p.a = &a;
  p.n = a.q.dim(0);
  p.hq = a.q.dim(1);
  p.d = a.q.dim(2);
  p.hkv = a.k.dim(1);
  if (p.n == 0 || p.hq == 0 || p.d == 0) return absl::OkStatus();
  p.group = p.hq / p.hkv;
  p.rows_per_tile = std::clamp<int64_t>(kTargetQueries / p.group, 1, p.n);
  p.query_tiles = (p.n + p.rows_per_tile - 1) / p.rows_per_tile;
  p.mp = (p.rows_per_tile * p.group + 7) / 8 * 8;
  p.qscale = a.scale * 1.4426950408889634f;  // log2(e)

  std::vector<HeadPlan> plans(p.hkv);
  size_t max_tiles = 0;
  for (int64_t g = 0; g < p.hkv; ++g) {
    plans[g] = PlanHead(a, g);
    max_tiles = std::max(max_tiles, plans[g].tiles.size());
  }
  // Split the keys of each (head, query tile) when that is the only way to occupy every thread.
  const int64_t tasks = p.hkv * p.query_tiles;
  const int64_t threads = pool->num_threads();
  int64_t splits = 1;
  if (threads > tasks) {
    splits = std::min<int64_t>((threads + tasks - 1) / tasks,
                               std::max<int64_t>(1, static_cast<int64_t>(max_tiles) / kMinTilesPerSplit));
  }
  // Split states live until the merge; unsplit tasks keep theirs in the worker's workspace.
  std::vector<float> split_buf;
  const int64_t state_floats = (p.d + 2) * p.mp;
  if (splits > 1) split_buf.resize(tasks * splits * state_floats);
  auto split_state = [&](int64_t task, int64_t s) {
    float* base = split_buf.data() + (task * splits + s) * state_floats;
    return QueryState{base, base + p.d * p.mp, base + (p.d + 1) * p.mp};
  };

  // Later query tiles see more keys; handing them out first balances the threads.
  const int64_t units = tasks * splits;
  std::atomic<int64_t> next{0};
  pool->ParallelFor(std::min(threads, units), [&](int64_t, int64_t) {
    Workspace ws(p.d, p.mp);
    for (int64_t u = next.fetch_add(1); u < units; u = next.fetch_add(1)) {
      const int64_t task = u / splits, s = u % splits;
      const int64_t qtile = p.query_tiles - 1 - task / p.hkv, g = task % p.hkv;
      const int64_t r0 = qtile * p.rows_per_tile, r1 = std::min(p.n, r0 + p.rows_per_tile);
      const int64_t mp = ((r1 - r0) * p.group + 7) / 8 * 8;
      const HeadPlan& plan = plans[g];
      const size_t nt = plan.tiles.size();
      const QueryState state =
          splits > 1 ? split_state(task, s) : QueryState{ws.ot.data(), ws.m.data(), ws.l.data()};
      PackQueries(p, g, r0, r1, mp, &ws);
      ResetState(p.d, mp, state);
      AttendTiles(p, plan, nt * s / splits, nt * (s + 1) / splits, a.pos0 + r0, a.pos0 + r1 - 1, mp, &ws, state);
      if (splits == 1) WriteOutput(p, g, r0, r1, mp, state);
    }
  });
  if (splits > 1) {
    pool->ParallelFor(tasks, [&](int64_t begin, int64_t end) {
      std::vector<QueryState> parts(splits);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t qtile = p.query_tiles - 1 - task / p.hkv, g = task % p.hkv;
        const int64_t r0 = qtile * p.rows_per_tile, r1 = std::min(p.n, r0 + p.rows_per_tile);
        const int64_t mp = ((r1 - r0) * p.group + 7) / 8 * 8;
        for (int64_t s = 0; s < splits; ++s) parts[s] = split_state(task, s);
        MergeSplits(p.d, mp, parts);
        WriteOutput(p, g, r0, r1, mp, parts[0]);
      }
    });
  }
  return absl::OkStatus();
}

}  // namespace livekv
