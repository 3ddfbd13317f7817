// Policies on synthetic keys whose semantic groups are scattered over positions.
#include "kvcache/policy.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <set>

#include "common/allocator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 32, kGroup = 4, kTokens = 2048, kTopics = 24;

// One layer, one KV head with 4 query heads. Every token belongs to one of kTopics directions, chosen at random
// per position, so a topic's tokens are spread over the whole sequence.
class SyntheticKv {
 public:
  SyntheticKv() : rng_(7) {
    g_.num_layers = 1;
    g_.num_kv_heads = 1;
    g_.layout = PageLayout{32, kDim, DType::kF32};
    g_.sink_tokens = 16;
    pool_ = PagePool::Create(&host_, {g_.layout.page_bytes(), 4096 * g_.layout.page_bytes()}).value();
    kv_ = SequenceKv::Create(g_, pool_.get()).value();
    std::normal_distribution<float> n(0, 1);
    for (int t = 0; t < kTopics; ++t) {
      std::vector<float> d(kDim);
      float norm = 0;
      for (float& x : d) {
        x = n(rng_);
        norm += x * x;
      }
      for (float& x : d) x /= std::sqrt(norm);
      topics_.push_back(d);
    }
    keys_.resize(kTokens * kDim);
    std::vector<float> values(kTokens * kDim);
    std::uniform_int_distribution<int> pick(0, kTopics - 1);
    for (int i = 0; i < kTokens; ++i) {
      topic_of_.push_back(pick(rng_));
      for (int c = 0; c < kDim; ++c) {
        keys_[i * kDim + c] = 6.0f * topics_[topic_of_[i]][c] + 0.4f * n(rng_);
        values[i * kDim + c] = n(rng_);
      }
    }
    EXPECT_TRUE(kv_->Append(0, keys_.data(), values.data(), kTokens, DType::kF32).ok());
    EXPECT_TRUE(kv_->Commit(kTokens).ok());
  }

  // Query heads of the group all looking for `topic`.
  std::vector<float> Query(int topic) {
    std::normal_distribution<float> n(0, 0.2f);
    std::vector<float> q(kGroup * kDim);
    for (int h = 0; h < kGroup; ++h)
      for (int c = 0; c < kDim; ++c) q[h * kDim + c] = 4.0f * topics_[topic][c] + n(rng_);
    return q;
  }

  // Dense softmax mass (scale 1/sqrt(d), mean over the group) covered by `positions`.
  double Mass(const std::vector<float>& q, const std::vector<int64_t>& positions) const {
    const std::set<int64_t> chosen(positions.begin(), positions.end());
    double total = 0;
    for (int h = 0; h < kGroup; ++h) {
      std::vector<double> s(kTokens);
      double mx = -1e300;
      for (int i = 0; i < kTokens; ++i) {
        double dot = 0;
        for (int c = 0; c < kDim; ++c) dot += double(q[h * kDim + c]) * keys_[i * kDim + c];
        mx = std::max(mx, s[i] = dot / std::sqrt(double(kDim)));
      }
      double sum = 0, covered = 0;
      for (int i = 0; i < kTokens; ++i) {
        const double p = std::exp(s[i] - mx);
        sum += p;
        if (chosen.count(i)) covered += p;
      }
      total += covered / sum;
    }
    return total / kGroup;
  }

  SequenceKv* kv() { return kv_.get(); }

 private:
  std::mt19937 rng_;
  HostAllocator host_;
  KvGeometry g_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<SequenceKv> kv_;
  std::vector<std::vector<float>> topics_;
  std::vector<float> keys_;
  std::vector<int> topic_of_;
};

PolicyOptions Options(PolicyKind kind, int32_t budget) {
  PolicyOptions o;
  o.kind = kind;
  o.budget = budget;
  o.dense_layers = {};
  o.window = 64;
  o.cluster_window = 64;
  o.tokens_per_cluster = 32;
  return o;
}

std::vector<int64_t> SelectPositions(SequenceKv* kv, KvPolicy* policy, const std::vector<float>& q) {
  auto plan = policy->AtSettlePoint(*kv);
  EXPECT_TRUE(plan.ok());
  EXPECT_TRUE(ApplyMaintenance(kv, *plan).ok());
  const ChunkQueries chunk{q.data(), 1, kGroup, kDim};
  LayerSelection sel;
  EXPECT_TRUE(policy->Select(*kv, 0, chunk, &sel).ok());
  if (policy->options().kind != PolicyKind::kFull) {
    EXPECT_LE(kv->SelectionTokens(0, 0, sel.heads[0]), policy->options().budget);
  }
  return kv->SelectionPositions(0, 0, sel.heads[0]);
}

TEST(PolicyTest, ClusterKvCoversAtLeastQuestsAttentionMassOnScatteredTopics) {
  for (int32_t budget : {256, 512, 1024}) {
    SyntheticKv a, b;  // separate sequences: clusterkv reorganises its own
    auto clusterkv = CreatePolicy(Options(PolicyKind::kClusterKv, budget), 1, kGroup, nullptr).value();
    auto quest = CreatePolicy(Options(PolicyKind::kQuest, budget), 1, kGroup, nullptr).value();
    double mass_c = 0, mass_q = 0;
    for (int topic = 0; topic < 6; ++topic) {
      const std::vector<float> q = a.Query(topic);
      mass_c += a.Mass(q, SelectPositions(a.kv(), clusterkv.get(), q));
      mass_q += b.Mass(q, SelectPositions(b.kv(), quest.get(), q));
    }
    EXPECT_GE(mass_c, mass_q) << "budget " << budget;
    // A topic has ~85 tokens scattered over 2048 positions: clusters gather them, pages cannot.
    EXPECT_GT(mass_c / 6, 0.6) << "budget " << budget;
    std::printf("budget %d: attention mass covered, clusterkv %.3f quest %.3f\n", budget, mass_c / 6, mass_q / 6);
  }
}

TEST(PolicyTest, SelectionsStayWithinBudgetAndAlwaysKeepSinkAndWindow) {
  SyntheticKv s;
  for (PolicyKind kind : {PolicyKind::kStreaming, PolicyKind::kQuest, PolicyKind::kClusterKv}) {
    auto policy = CreatePolicy(Options(kind, 300), 1, kGroup, nullptr).value();
    const std::vector<int64_t> pos = SelectPositions(s.kv(), policy.get(), s.Query(3));
    const std::set<int64_t> set(pos.begin(), pos.end());
    EXPECT_EQ(set.size(), pos.size()) << "no token twice";
    EXPECT_LE(pos.size(), 300u);
    for (int64_t p = 0; p < 16; ++p) EXPECT_TRUE(set.count(p)) << PolicyKindName(kind) << " sink " << p;
    for (int64_t p = kTokens - 64; p < kTokens; ++p) EXPECT_TRUE(set.count(p)) << PolicyKindName(kind) << " recent " << p;
  }
}

TEST(PolicyTest, FullSelectsEverything) {
  SyntheticKv s;
  auto policy = CreatePolicy(Options(PolicyKind::kFull, 1), 1, kGroup, nullptr).value();
  EXPECT_EQ(SelectPositions(s.kv(), policy.get(), s.Query(0)).size(), static_cast<size_t>(kTokens));
}

struct BadOptions {
  PolicyOptions options;
  const char* expect;
};

TEST(PolicyOptionsTest, InvalidOptionsNameTheParameter) {
  std::vector<BadOptions> cases;
  PolicyOptions o = Options(PolicyKind::kClusterKv, 100);
  cases.push_back({o, "budget (100) must be at least sink + window + cluster_window (144)"});
  o = Options(PolicyKind::kQuest, 100);
  cases.push_back({o, "budget (100) must be at least sink + window + page_tokens (112)"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.window = 50;
  cases.push_back({o, "window (50) must be a multiple of page_tokens (32)"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.page_tokens = 0;
  cases.push_back({o, "page_tokens must be positive, saw 0"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.budget = -5;
  cases.push_back({o, "budget must be positive, saw -5"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.sink = -1;
  cases.push_back({o, "sink must be >= 0, saw -1"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.dense_layers = {3};
  cases.push_back({o, "dense layer 3 is outside the model's layers [0, 2)"});
  o = Options(PolicyKind::kClusterKv, 1024);
  o.window_clusters = 100;
  cases.push_back({o, "window_clusters (100) cannot exceed cluster_window (64)"});
  for (const BadOptions& c : cases) {
    absl::Status s = c.options.Validate(2);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expect;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expect));
    EXPECT_EQ(CreatePolicy(c.options, 2, 4, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THAT(std::string(ParsePolicyKind("h2o").status().message()), HasSubstr("unknown policy \"h2o\""));
}

}  // namespace
}  // namespace livekv
