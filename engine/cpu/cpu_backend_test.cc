// Each CPU operation against a naive double-precision reference, on odd and degenerate sizes.
#include "engine/cpu/cpu_backend.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

class CpuBackendTest : public ::testing::Test {
 protected:
  CpuBackend backend_{CpuBackendOptions{.num_threads = 3}};
  std::mt19937 rng_{1234};

  Tensor Random(Shape shape, float scale = 1.0f) {
    Tensor t = backend_.Allocate(DType::kF32, shape).value();
    std::normal_distribution<float> dist(0.0f, scale);
    for (int64_t i = 0; i < t.numel(); ++i) t.view().as<float>()[i] = dist(rng_);
    return t;
  }
  Tensor Poisoned(Shape shape) {
    Tensor t = backend_.Allocate(DType::kF32, shape).value();
    for (int64_t i = 0; i < t.numel(); ++i) t.view().as<float>()[i] = std::nanf("");
    return t;
  }
};

void ExpectClose(const float* got, const std::vector<double>& want, double rel_tol) {
  double max_ref = 1e-30;
  for (double w : want) max_ref = std::max(max_ref, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "element " << i << " unwritten or NaN";
    ASSERT_NEAR(got[i], want[i], rel_tol * max_ref) << "element " << i;
  }
}

TEST_F(CpuBackendTest, LinearMatchesReferenceOnOddSizes) {
  for (auto [n, in, out] : {std::tuple{1, 1, 1}, {3, 7, 5}, {17, 33, 65}, {64, 128, 96}}) {
    Tensor x = Random({n, in}), w = Random({out, in}), b = Random({out}), y = Poisoned({n, out});
    ASSERT_TRUE(backend_.Linear(x.view(), w.view(), &b.view(), y.view()).ok());
    std::vector<double> want(n * out);
    for (int r = 0; r < n; ++r)
      for (int o = 0; o < out; ++o) {
        double acc = b.view().as<float>()[o];
        for (int i = 0; i < in; ++i) acc += double(x.view().as<float>()[r * in + i]) * w.view().as<float>()[o * in + i];
        want[r * out + o] = acc;
      }
    ExpectClose(y.view().as<float>(), want, 1e-5);
  }
}

TEST_F(CpuBackendTest, LinearRejectsMismatchedShapes) {
  Tensor x = Random({3, 7}), w = Random({5, 8}), y = Poisoned({3, 5});
  absl::Status s = backend_.Linear(x.view(), w.view(), nullptr, y.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("[5, 8]"));
}

TEST_F(CpuBackendTest, RmsNormMatchesReference) {
  Tensor x = Random({5, 37}), w = Random({37}), y = Poisoned({5, 37});
  ASSERT_TRUE(backend_.RmsNorm(x.view(), w.view(), 1e-5f, y.view()).ok());
  std::vector<double> want(5 * 37);
  for (int r = 0; r < 5; ++r) {
    double ss = 0;
    for (int i = 0; i < 37; ++i) ss += std::pow(x.view().as<float>()[r * 37 + i], 2);
    const double inv = 1.0 / std::sqrt(ss / 37 + 1e-5);
    for (int i = 0; i < 37; ++i) want[r * 37 + i] = x.view().as<float>()[r * 37 + i] * inv * w.view().as<float>()[i];
  }
  ExpectClose(y.view().as<float>(), want, 1e-6);
}

TEST_F(CpuBackendTest, SwiGluMatchesReference) {
  Tensor gu = Random({3, 2 * 11}), y = Poisoned({3, 11});
  ASSERT_TRUE(backend_.SwiGlu(gu.view(), y.view()).ok());
  std::vector<double> want(33);
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 11; ++i) {
      const double g = gu.view().as<float>()[r * 22 + i], u = gu.view().as<float>()[r * 22 + 11 + i];
      want[r * 11 + i] = g / (1 + std::exp(-g)) * u;
    }
  ExpectClose(y.view().as<float>(), want, 1e-6);
}

TEST_F(CpuBackendTest, EmbedRejectsOutOfRangeIds) {
  Tensor table = Random({10, 4}), out = Poisoned({2, 4});
  const int32_t ids[] = {3, 10};
  absl::Status s = backend_.Embed(ids, table.view(), out.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token id 10"));
}

TEST_F(CpuBackendTest, SplitQkvRopeRotatesQAndKButNotV) {
  ModelConfig c;
  c.head_dim = 6;
  c.rope_theta = 100.0;
  const RopeTable rope = RopeTable::FromConfig(c);
  const int n = 3, hq = 4, hkv = 2, d = 6;
  Tensor qkv = Random({n, (hq + 2 * hkv) * d}), q = Poisoned({n, hq, d}), k = Poisoned({n, hkv, d}),
         v = Poisoned({n, hkv, d});
  ASSERT_TRUE(backend_.SplitQkvRope(qkv.view(), 5, rope, q.view(), k.view(), v.view()).ok());
  for (int r = 0; r < n; ++r) {
    const float* src = qkv.view().as<float>() + r * (hq + 2 * hkv) * d;
    for (int h = 0; h < hq + hkv; ++h) {
      const float* x = src + h * d;
      const float* got = h < hq ? q.view().as<float>() + (r * hq + h) * d : k.view().as<float>() + (r * hkv + h - hq) * d;
      for (int i = 0; i < d / 2; ++i) {
        const double a = double(5 + r) * std::pow(100.0, -2.0 * i / d);
        EXPECT_NEAR(got[i], x[i] * std::cos(a) - x[i + 3] * std::sin(a), 1e-5);
        EXPECT_NEAR(got[i + 3], x[i + 3] * std::cos(a) + x[i] * std::sin(a), 1e-5);
      }
    }
    for (int i = 0; i < hkv * d; ++i) EXPECT_EQ(v.view().as<float>()[r * hkv * d + i], src[(hq + hkv) * d + i]);
  }
}

TEST_F(CpuBackendTest, ScatterHeadMajorIsExactAndConverts) {
  Tensor src = Random({3, 2, 5}), dst = Poisoned({2, 7, 5});
  ASSERT_TRUE(backend_.ScatterHeadMajor(src.view(), dst.view(), 4).ok());
  for (int r = 0; r < 3; ++r)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 5; ++i)
        EXPECT_EQ(dst.view().as<float>()[(h * 7 + 4 + r) * 5 + i], src.view().as<float>()[(r * 2 + h) * 5 + i]);
  EXPECT_EQ(backend_.ScatterHeadMajor(src.view(), dst.view(), 5).code(), absl::StatusCode::kInvalidArgument);
  Tensor bf = backend_.Allocate(DType::kBF16, {2, 3, 5}).value();
  ASSERT_TRUE(backend_.ScatterHeadMajor(src.view(), bf.view(), 0).ok());
  EXPECT_EQ(bf.view().as<uint16_t>()[(1 * 3 + 2) * 5 + 4], F32ToBF16(src.view().as<float>()[(2 * 2 + 1) * 5 + 4]));
}

// Naive attention over an explicit list of visible (position, k, v) rows per query.
struct RefRow {
  int64_t pos;
  std::vector<float> k, v;
};

TEST_F(CpuBackendTest, AttentionOverSplitContextRunsMatchesReference) {
  const int n = 4, hq = 6, hkv = 2, d = 8, ctx_len = 13;
  const int64_t pos0 = ctx_len;
  for (DType ctx_type : {DType::kF32, DType::kBF16}) {
    for (int64_t window : {int64_t{0}, int64_t{5}}) {
      Tensor q = Random({n, hq, d}), k = Random({n, hkv, d}), v = Random({n, hkv, d}), out = Poisoned({n, hq, d});
      // Context: per head [ctx_len][d] keys/values, split into runs of 5, 1 and 7 rows.
      Tensor ck = Random({hkv, ctx_len, d}), cv = Random({hkv, ctx_len, d});
      Tensor ckt = backend_.Allocate(ctx_type, {hkv, ctx_len, d}).value();
      Tensor cvt = backend_.Allocate(ctx_type, {hkv, ctx_len, d}).value();
      ASSERT_TRUE(backend_.CopyFromHost(ck.data(), DType::kF32, ckt.view()).ok());
      ASSERT_TRUE(backend_.CopyFromHost(cv.data(), DType::kF32, cvt.view()).ok());
      ContextKv ctx;
      ctx.dtype = ctx_type;
      ctx.heads.resize(hkv);
      const size_t es = DTypeSize(ctx_type);
      for (int g = 0; g < hkv; ++g) {
        int start = 0;
        for (int len : {5, 1, 7}) {
          KvRun run;
          run.k = static_cast<char*>(ckt.data()) + (g * ctx_len + start) * d * es;
          run.v = static_cast<char*>(cvt.data()) + (g * ctx_len + start) * d * es;
          run.n = len;
          run.first_position = start;
          ctx.heads[g].push_back(run);
          start += len;
        }
      }
      AttentionArgs a{q.view(), k.view(), v.view(), pos0, &ctx, 0.3f, window, out.view()};
      ASSERT_TRUE(backend_.Attention(a).ok());

      std::vector<double> want(n * hq * d);
      std::vector<float> round_k(ctx_len * d), round_v(ctx_len * d);
      for (int r = 0; r < n; ++r)
        for (int h = 0; h < hq; ++h) {
          const int g = h / (hq / hkv);
          std::vector<RefRow> rows;
          for (int j = 0; j < ctx_len; ++j) {
            RefRow row{j, {}, {}};
            for (int i = 0; i < d; ++i) {
              float kk = ck.view().as<float>()[(g * ctx_len + j) * d + i];
              float vv = cv.view().as<float>()[(g * ctx_len + j) * d + i];
              if (ctx_type == DType::kBF16) kk = BF16ToF32(F32ToBF16(kk)), vv = BF16ToF32(F32ToBF16(vv));
              row.k.push_back(kk);
              row.v.push_back(vv);
            }
            rows.push_back(row);
          }
          for (int j = 0; j <= r; ++j) {
            RefRow row{pos0 + j, {}, {}};
            for (int i = 0; i < d; ++i) {
              row.k.push_back(k.view().as<float>()[(j * hkv + g) * d + i]);
              row.v.push_back(v.view().as<float>()[(j * hkv + g) * d + i]);
            }
            rows.push_back(row);
          }
          std::vector<double> s;
          std::vector<const RefRow*> vis;
          for (const RefRow& row : rows) {
            if (window > 0 && pos0 + r - row.pos >= window) continue;
            double dot = 0;
            for (int i = 0; i < d; ++i) dot += double(q.view().as<float>()[(r * hq + h) * d + i]) * row.k[i];
            s.push_back(dot * 0.3);
            vis.push_back(&row);
          }
          double mx = *std::max_element(s.begin(), s.end()), sum = 0;
          for (double& x : s) sum += (x = std::exp(x - mx));
          for (size_t j = 0; j < s.size(); ++j)
            for (int i = 0; i < d; ++i) want[(r * hq + h) * d + i] += s[j] / sum * vis[j]->v[i];
        }
      ExpectClose(out.view().as<float>(), want, 1e-5);
    }
  }
}

TEST_F(CpuBackendTest, AttentionRejectsContextWithWrongHeadCount) {
  Tensor q = Random({1, 4, 8}), k = Random({1, 2, 8}), v = Random({1, 2, 8}), out = Poisoned({1, 4, 8});
  ContextKv ctx;
  ctx.heads.resize(3);
  AttentionArgs a{q.view(), k.view(), v.view(), 0, &ctx, 1.0f, 0, out.view()};
  EXPECT_EQ(backend_.Attention(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
