// CpuAttention (the blocked kernel) against the row-at-a-time reference it replaced (cpu_attention_reference.h),
// on sizes chosen to break the blocking: one row, prime row counts, head dims that are not multiples of the
// vector width, groups of 1, 4 and 7 query heads per KV head, empty contexts, many tiny runs, long runs, 16-bit
// contexts, sliding windows and chunks that do not start at position 0. Outputs are poisoned with NaN before
// every call and checked everywhere.
#include "engine/cpu/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_attention_reference.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

TensorView View(std::vector<float>* data, Shape shape) { return TensorView{data->data(), DType::kF32, shape}; }

// One attention problem: chunk tensors and a context of `runs` (lengths per KV head) in `ctx_type`.
struct Case {
  std::string name;
  int64_t n, hq, hkv, d;
  int64_t pos0 = 0;
  // Run lengths of KV head g are runs[g % runs.size()]; empty: no context at all (a null ContextKv).
  std::vector<std::vector<int32_t>> runs;
  bool positional = true;  // runs carry consecutive positions from ctx_first_position on; else -1 (clusters)
  int64_t ctx_first_position = 0;
  bool shuffle_runs = false;  // list the runs out of position order, as a policy's selection may
  int64_t window = 0;
  float scale = 0.0f;      // 0: 1/sqrt(d)
  float magnitude = 1.0f;  // standard deviation of q and k: larger makes the softmax peakier
};

class Problem {
 public:
  Problem(const Case& c, DType ctx_type, uint32_t seed) : c_(c), rng_(seed) {
    q_ = Random(c.n * c.hq * c.d, c.magnitude);
    k_ = Random(c.n * c.hkv * c.d, c.magnitude);
    v_ = Random(c.n * c.hkv * c.d, 1.0f);
    out_.resize(c.n * c.hq * c.d);
    if (c.runs.empty()) return;
    ctx_.dtype = ctx_type;
    ctx_.heads.resize(c.hkv);
    const size_t es = DTypeSize(ctx_type);
    for (int64_t g = 0; g < c.hkv; ++g) {
      const std::vector<int32_t>& lens = c.runs[g % c.runs.size()];
      const int64_t total = std::accumulate(lens.begin(), lens.end(), int64_t{0});
      const std::vector<float> kf = Random(total * c.d, c.magnitude), vf = Random(total * c.d, 1.0f);
      std::vector<char>& kb = storage_.emplace_back(total * c.d * es + 1);  // never empty, so data() is not null
      std::vector<char>& vb = storage_.emplace_back(total * c.d * es + 1);
      ConvertFromF32(kf.data(), kf.size(), ctx_type, kb.data());
      ConvertFromF32(vf.data(), vf.size(), ctx_type, vb.data());
      int64_t start = 0;
      for (int32_t len : lens) {
        KvRun run;
        run.k = kb.data() + start * c.d * es;
        run.v = vb.data() + start * c.d * es;
        run.n = len;
        run.first_position = c.positional ? c.ctx_first_position + start : -1;
        ctx_.heads[g].push_back(run);
        start += len;
      }
      if (c.shuffle_runs) std::shuffle(ctx_.heads[g].begin(), ctx_.heads[g].end(), rng_);
    }
  }

  AttentionArgs Args() {
    AttentionArgs a;
    a.q = View(&q_, {c_.n, c_.hq, c_.d});
    a.k = View(&k_, {c_.n, c_.hkv, c_.d});
    a.v = View(&v_, {c_.n, c_.hkv, c_.d});
    a.pos0 = c_.pos0;
    a.context = c_.runs.empty() ? nullptr : &ctx_;
    a.scale = c_.scale != 0.0f ? c_.scale : 1.0f / std::sqrt(static_cast<float>(c_.d));
    a.sliding_window = c_.window;
    a.out = View(&out_, {c_.n, c_.hq, c_.d});
    return a;
  }

  // Runs `fn` on poisoned outputs and returns them.
  template <typename Fn>
  std::vector<float> Run(Fn fn) {
    std::fill(out_.begin(), out_.end(), std::nanf(""));
    const absl::Status s = fn(Args());
    EXPECT_TRUE(s.ok()) << s;
    return out_;
  }

 private:
  std::vector<float> Random(int64_t count, float stddev) {
    std::normal_distribution<float> dist(0.0f, stddev);
    std::vector<float> x(count);
    for (float& e : x) e = dist(rng_);
    return x;
  }

  Case c_;
  std::mt19937 rng_;
  std::vector<float> q_, k_, v_, out_;
  std::deque<std::vector<char>> storage_;  // a deque: references stay valid as it grows
  ContextKv ctx_;
};

// Every element written (no NaN left from the poison) and within rel_tol of the largest reference magnitude.
void ExpectMatches(const std::vector<float>& got, const std::vector<float>& want, double rel_tol,
                   const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 1e-30;
  for (float w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
  double worst = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(want[i])) << what << ": reference element " << i << " is NaN";
    ASSERT_FALSE(std::isnan(got[i])) << what << ": element " << i << " unwritten or NaN";
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (err > worst) worst = err, worst_at = i;
  }
  EXPECT_LE(worst, rel_tol * scale) << what << ": element " << worst_at << " is " << got[worst_at] << ", want "
                                    << want[worst_at] << " (magnitude " << scale << ")";
}

std::vector<int32_t> Repeat(int32_t len, int count) { return std::vector<int32_t>(count, len); }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  // Decode: one row over nothing, over pages, over a long context split across threads.
  add({.name = "decode_no_context", .n = 1, .hq = 8, .hkv = 2, .d = 32});
  add({.name = "decode_pages", .n = 1, .hq = 8, .hkv = 2, .d = 32, .pos0 = 640, .runs = {Repeat(32, 20)}});
  add({.name = "decode_long_group4_one_head", .n = 1, .hq = 4, .hkv = 1, .d = 64, .pos0 = 5000,
       .runs = {{5000}}});
  add({.name = "decode_group7_tiny_runs", .n = 1, .hq = 14, .hkv = 2, .d = 32, .pos0 = 800,
       .runs = {Repeat(1, 400), Repeat(3, 200)}, .shuffle_runs = true});
  // Prefill chunks.
  add({.name = "prime_rows_no_context", .n = 37, .hq = 8, .hkv = 2, .d = 32});
  add({.name = "prefill_chunk_over_pages", .n = 257, .hq = 8, .hkv = 2, .d = 32, .pos0 = 1024,
       .runs = {Repeat(32, 32)}});
  add({.name = "group7_d64_small_runs", .n = 31, .hq = 7, .hkv = 1, .d = 64, .pos0 = 101,
       .runs = {{1, 2, 3, 5, 7, 11, 13, 17, 19, 23}}});
  add({.name = "group1_d128", .n = 61, .hq = 3, .hkv = 3, .d = 128, .pos0 = 70, .runs = {{70}, {33, 37}, {1, 69}}});
  add({.name = "odd_head_dim_13", .n = 17, .hq = 8, .hkv = 2, .d = 13, .pos0 = 50, .runs = {{25, 25}}});
  add({.name = "head_dim_1", .n = 9, .hq = 4, .hkv = 2, .d = 1, .pos0 = 5, .runs = {{5}}});
  add({.name = "head_dim_7_group16", .n = 23, .hq = 32, .hkv = 2, .d = 7, .pos0 = 60, .runs = {{60}}});
  add({.name = "group1_two_query_tiles", .n = 100, .hq = 1, .hkv = 1, .d = 8});
  // Semantic clusters: runs without positions, listed in any order, differing per head.
  add({.name = "clusters", .n = 13, .hq = 8, .hkv = 2, .d = 32, .pos0 = 300,
       .runs = {{40, 0, 17, 1, 64}, {5, 0, 0, 90}}, .positional = false, .shuffle_runs = true});
  // Empty contexts: no runs at all, or only runs of length 0.
  add({.name = "empty_context", .n = 5, .hq = 8, .hkv = 2, .d = 32, .pos0 = 9, .runs = {{}}});
  add({.name = "zero_length_runs", .n = 5, .hq = 8, .hkv = 2, .d = 32, .pos0 = 9, .runs = {{0, 0, 0}}});
  // Sliding windows: cutting through the context, through the chunk, down to the key itself.
  add({.name = "window_through_context", .n = 29, .hq = 8, .hkv = 2, .d = 32, .pos0 = 400,
       .runs = {Repeat(32, 12), Repeat(16, 25)}, .shuffle_runs = true, .window = 150});
  add({.name = "window_within_chunk", .n = 211, .hq = 8, .hkv = 2, .d = 32, .pos0 = 96, .runs = {Repeat(32, 3)},
       .window = 53});
  add({.name = "window_1_self_only", .n = 19, .hq = 4, .hkv = 1, .d = 32, .pos0 = 64, .runs = {Repeat(32, 2)},
       .window = 1});
  add({.name = "window_decode_gap", .n = 1, .hq = 8, .hkv = 2, .d = 32, .pos0 = 3000, .runs = {Repeat(32, 40)},
       .ctx_first_position = 1500, .window = 2000});
  // Context positions after the chunk's: the context is visible whatever its positions (window allowing).
  add({.name = "context_after_chunk", .n = 7, .hq = 8, .hkv = 2, .d = 32, .pos0 = 0, .runs = {{60, 60}},
       .ctx_first_position = 100, .window = 500});
  // Peaky softmax: large scores make the running maximum move between key tiles.
  add({.name = "large_scores", .n = 41, .hq = 8, .hkv = 2, .d = 32, .pos0 = 500, .runs = {Repeat(50, 10)},
       .scale = 0.6f, .magnitude = 2.0f});
  return cases;
}

TEST(CpuAttentionTest, MatchesRowAtATimeReference) {
  ThreadPool one(1), three(3), eight(8);
  uint32_t seed = 1;
  for (const Case& c : Cases()) {
    for (DType ctx_type : {DType::kF32, DType::kBF16, DType::kF16}) {
      if (c.runs.empty() && ctx_type != DType::kF32) continue;
      Problem p(c, ctx_type, seed++);
      const std::vector<float> want =
          p.Run([&](const AttentionArgs& a) { return ReferenceCpuAttention(a, &one); });
      for (ThreadPool* pool : {&one, &three, &eight}) {
        const std::vector<float> got = p.Run([&](const AttentionArgs& a) { return CpuAttention(a, pool); });
        ExpectMatches(got, want, 1e-5,
                      absl::StrCat(c.name, " ", DTypeName(ctx_type), " ", pool->num_threads(), " threads"));
      }
    }
  }
}

// Every window width from 1 to past the whole sequence, so that some width puts the window's edge exactly on
// every key tile's boundary, whatever the tile size.
TEST(CpuAttentionTest, MatchesReferenceAtEveryWindowWidth) {
  ThreadPool one(1), three(3);
  for (int64_t n : {1, 6}) {
    for (int64_t window = 1; window <= 260; ++window) {
      const Case c{.name = "window_sweep", .n = n, .hq = 8, .hkv = 2, .d = 16, .pos0 = 250,
                   .runs = {{32, 32, 32, 32, 32, 32, 32, 26}}, .window = window};
      Problem p(c, DType::kF32, static_cast<uint32_t>(window));
      const std::vector<float> want =
          p.Run([&](const AttentionArgs& a) { return ReferenceCpuAttention(a, &one); });
      for (ThreadPool* pool : {&one, &three}) {
        const std::vector<float> got = p.Run([&](const AttentionArgs& a) { return CpuAttention(a, pool); });
        ExpectMatches(got, want, 1e-5, absl::StrCat("n ", n, " window ", window, ", ", pool->num_threads(), " threads"));
        if (HasFailure()) return;
      }
    }
  }
}

// Independent of the reference: one visible key (the row itself) returns its value; two keys of equal score
// return their mean.
TEST(CpuAttentionTest, OutputsAreWeightedValues) {
  ThreadPool pool(2);
  std::vector<float> q(3 * 4 * 5, 0.25f), k(3 * 2 * 5), v(3 * 2 * 5), out(3 * 4 * 5, std::nanf(""));
  for (size_t i = 0; i < k.size(); ++i) k[i] = 0.1f * static_cast<float>(i % 7), v[i] = static_cast<float>(i);
  AttentionArgs a;
  a.q = View(&q, {3, 4, 5});
  a.k = View(&k, {3, 2, 5});
  a.v = View(&v, {3, 2, 5});
  a.out = View(&out, {3, 4, 5});
  a.pos0 = 10;
  a.sliding_window = 1;
  ASSERT_TRUE(CpuAttention(a, &pool).ok());
  for (int r = 0; r < 3; ++r)
    for (int h = 0; h < 4; ++h)
      for (int t = 0; t < 5; ++t) EXPECT_EQ(out[(r * 4 + h) * 5 + t], v[(r * 2 + h / 2) * 5 + t]);

  // Zero queries score every key 0: row 1 averages keys 0 and 1.
  std::fill(q.begin(), q.end(), 0.0f);
  std::fill(out.begin(), out.end(), std::nanf(""));
  a.sliding_window = 0;
  ASSERT_TRUE(CpuAttention(a, &pool).ok());
  for (int h = 0; h < 4; ++h)
    for (int t = 0; t < 5; ++t) {
      const int g = h / 2;
      EXPECT_FLOAT_EQ(out[(1 * 4 + h) * 5 + t], 0.5f * (v[(0 * 2 + g) * 5 + t] + v[(1 * 2 + g) * 5 + t]));
    }
}

TEST(CpuAttentionTest, DecodeStoresTheQueryCopy) {
  const int64_t hq = 4, hkv = 2, d = 8, ctx_len = 5;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  auto random = [&](size_t n) {
    std::vector<float> x(n);
    for (float& v : x) v = nd(rng);
    return x;
  };
  std::vector<float> q = random(hq * d), k = random(hkv * d), v = random(hkv * d), out(hq * d);
  std::vector<float> ck = random(ctx_len * d), cv = random(ctx_len * d), copy(hq * d, -7.0f);
  ContextKv ctx;
  ctx.heads.resize(hkv);
  for (auto& h : ctx.heads) h.push_back(KvRun{ck.data(), cv.data(), static_cast<int32_t>(ctx_len), 0});
  ctx.query_copy = copy.data();
  AttentionArgs a;
  a.q = View(&q, {1, hq, d});
  a.k = View(&k, {1, hkv, d});
  a.v = View(&v, {1, hkv, d});
  a.out = View(&out, {1, hq, d});
  a.pos0 = ctx_len;
  a.context = &ctx;
  a.scale = 0.5f;
  ThreadPool pool(2);
  ASSERT_TRUE(CpuAttention(a, &pool).ok());
  EXPECT_EQ(copy, q);
  // Chunks of several rows have no query copy.
  std::vector<float> q2 = random(2 * hq * d), k2 = random(2 * hkv * d), v2 = random(2 * hkv * d), out2(2 * hq * d);
  a.q = View(&q2, {2, hq, d});
  a.k = View(&k2, {2, hkv, d});
  a.v = View(&v2, {2, hkv, d});
  a.out = View(&out2, {2, hq, d});
  EXPECT_EQ(CpuAttention(a, &pool).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuAttentionTest, InvalidArgumentsAreRejected) {
  ThreadPool pool(1);
  std::vector<float> q(2 * 4 * 8), k(2 * 2 * 8), v(2 * 2 * 8), out(2 * 4 * 8), k3(2 * 3 * 8);
  std::vector<uint16_t> rows(8);
  auto base = [&] {
    AttentionArgs a;
    a.q = View(&q, {2, 4, 8});
    a.k = View(&k, {2, 2, 8});
    a.v = View(&v, {2, 2, 8});
    a.out = View(&out, {2, 4, 8});
    return a;
  };
  ContextKv wrong_heads;
  wrong_heads.heads.resize(3);
  ContextKv int_dtype;
  int_dtype.dtype = DType::kI32;
  int_dtype.heads.resize(2);
  ContextKv negative_run;
  negative_run.heads = {{KvRun{rows.data(), rows.data(), -1, 0}}, {}};
  ContextKv null_rows;
  null_rows.heads = {{}, {KvRun{nullptr, rows.data(), 1, 0}}};
  ContextKv unpositioned;
  unpositioned.heads = {{KvRun{rows.data(), rows.data(), 1, -1}}, {}};

  std::vector<AttentionArgs> bad;
  {
    AttentionArgs a = base();
    a.q = View(&q, {2, 32});
    bad.push_back(a);
  }
  {
    AttentionArgs a = base();
    a.v = View(&v, {2, 1, 16});
    bad.push_back(a);
  }
  {
    AttentionArgs a = base();
    a.out = View(&out, {2, 8, 4});
    bad.push_back(a);
  }
  {
    AttentionArgs a = base();
    a.k = View(&k3, {2, 3, 8});
    a.v = View(&k3, {2, 3, 8});
    bad.push_back(a);
  }
  {
    AttentionArgs a = base();
    a.q.dtype = DType::kBF16;
    bad.push_back(a);
  }
  for (const ContextKv* ctx : {&wrong_heads, &int_dtype, &negative_run, &null_rows}) {
    AttentionArgs a = base();
    a.context = ctx;
    bad.push_back(a);
  }
  {
    AttentionArgs a = base();
    a.context = &unpositioned;
    a.sliding_window = 4;
    bad.push_back(a);
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    const absl::Status got = CpuAttention(bad[i], &pool);
    EXPECT_EQ(got.code(), absl::StatusCode::kInvalidArgument) << "case " << i << ": " << got;
    EXPECT_TRUE(absl::StartsWith(got.message(), "attention: ")) << "case " << i << ": " << got;
  }
  // The unpositioned context is fine without a window.
  AttentionArgs a = base();
  a.context = &unpositioned;
  EXPECT_TRUE(CpuAttention(a, &pool).ok());
}

}  // namespace
}  // namespace livekv
