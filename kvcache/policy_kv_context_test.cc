// Policies inside the engine: on the project's trained model (models/tiny) and on dummy models.
#include "kvcache/policy_kv_context.h"

#include <cmath>
#include <cstdio>

#include "common/file.h"
#include "common/thread_pool.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/model_files.h"
#include "engine/presets.h"
#include "engine/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/eval_set.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

std::vector<int32_t> ByteIds(const std::string& s, bool bos) {
  std::vector<int32_t> ids;
  if (bos) ids.push_back(256);
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

// Attention of one query vector over runs (dense softmax, scale 1/sqrt(d)), in double.
std::vector<double> Attend(const float* q, const std::vector<KvRun>& runs, int d) {
  std::vector<double> scores;
  std::vector<const float*> values;
  for (const KvRun& r : runs) {
    for (int32_t i = 0; i < r.n; ++i) {
      const float* k = static_cast<const float*>(r.k) + i * d;
      double s = 0;
      for (int c = 0; c < d; ++c) s += double(q[c]) * k[c];
      scores.push_back(s / std::sqrt(double(d)));
      values.push_back(static_cast<const float*>(r.v) + i * d);
    }
  }
  const double mx = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (double& s : scores) sum += (s = std::exp(s - mx));
  std::vector<double> out(d, 0.0);
  for (size_t i = 0; i < scores.size(); ++i)
    for (int c = 0; c < d; ++c) out[c] += scores[i] / sum * values[i][c];
  return out;
}

// Wraps a PolicyKvContext and, at each decode step, measures the relative L2 error of the selected context's
// attention output against the whole context's, for every query head of `layer`.
class ErrorProbe : public KvContext {
 public:
  ErrorProbe(PolicyKvContext* inner, const ModelConfig& c, int layer) : inner_(inner), c_(c), layer_(layer) {}
  int64_t num_tokens() const override { return inner_->num_tokens(); }
  absl::Status Select(int layer, TensorView q, ContextKv* ctx) override {
    absl::Status s = inner_->Select(layer, q, ctx);
    if (!s.ok() || layer != layer_ || q.dim(0) != 1) return s;
    const SequenceKv& seq = inner_->sequence();
    for (int32_t g = 0; g < c_.num_kv_heads; ++g) {
      std::vector<KvRun> all;
      seq.AppendRuns(layer, g, seq.SelectAll(layer, g), &all);
      for (int32_t j = 0; j < c_.group_size(); ++j) {
        const float* qv = q.as<float>() + (g * c_.group_size() + j) * c_.head_dim;
        const std::vector<double> want = Attend(qv, all, c_.head_dim);
        const std::vector<double> got = Attend(qv, ctx->heads[g], c_.head_dim);
        double num = 0, den = 0;
        for (int i = 0; i < c_.head_dim; ++i) num += std::pow(got[i] - want[i], 2), den += want[i] * want[i];
        error_sum_ += std::sqrt(num / den);
        ++samples_;
      }
    }
    return s;
  }
  absl::Status Append(int layer, TensorView k, TensorView v) override { return inner_->Append(layer, k, v); }
  absl::Status Commit(int64_t n) override { return inner_->Commit(n); }
  void Rollback() override { inner_->Rollback(); }
  double mean_error() const { return samples_ ? error_sum_ / samples_ : 0; }

 private:
  PolicyKvContext* inner_;
  const ModelConfig c_;
  const int layer_;
  double error_sum_ = 0;
  int64_t samples_ = 0;
};

class TrainedModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_ = new CpuBackend(CpuBackendOptions{.num_threads = 2});
    model_ = new LoadedModel(LoadModel("models/tiny", backend_).value());
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
  }

  struct Run {
    std::string text;
    std::vector<LayerCounters> counters;
    double error = 0;
  };

  // Prefill `doc`, then greedy-decode the answer's length through `options`.
  Run Generate(const PolicyOptions& options, const EvalDoc& doc, int probe_layer = 2) {
    HostAllocator host;
    const std::vector<int32_t> prompt = ByteIds(doc.prompt, true);
    auto pool = CreateKvPagePool(model_->config, options, prompt.size() + 64, &host).value();
    auto kv = PolicyKvContext::Create(model_->config, options, pool.get(), nullptr).value();
    ErrorProbe probe(kv.get(), model_->config, probe_layer);
    std::vector<float> logits;
    Run run;
    EXPECT_TRUE(model_->transformer->Forward(prompt, &probe, false, &logits).ok());
    for (size_t i = 0; i < doc.answer.size(); ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      run.text.push_back(static_cast<char>(next));
      EXPECT_TRUE(model_->transformer->Forward({&next, 1}, &probe, false, &logits).ok());
    }
    run.counters = kv->counters();
    run.error = probe.mean_error();
    return run;
  }

  static PolicyOptions Options(PolicyKind kind, int32_t budget) {
    PolicyOptions o;
    o.kind = kind;
    o.budget = budget;
    o.measure_attention_mass = true;
    return o;
  }

  static double SparseMass(const Run& r) { return (r.counters[2].mean_mass() + r.counters[3].mean_mass()) / 2; }

  static CpuBackend* backend_;
  static LoadedModel* model_;
};

CpuBackend* TrainedModelTest::backend_ = nullptr;
LoadedModel* TrainedModelTest::model_ = nullptr;

TEST_F(TrainedModelTest, FullPolicyAnswersTheRetrievalTasks) {
  for (const char* task : {"passkey", "multikey", "vartrack"}) {
    const EvalDoc doc = ReadEvalDoc(std::string("models/tiny/eval/") + task + "_1024.jsonl", 0).value();
    EXPECT_EQ(Generate(Options(PolicyKind::kFull, 1), doc).text, doc.answer) << task;
  }
}

TEST_F(TrainedModelTest, ClusterKvCoversAtLeastQuestsAttentionMassAndFindsTheNeedle) {
  for (int i = 0; i < 3; ++i) {
    const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_2048.jsonl", i).value();
    const Run c = Generate(Options(PolicyKind::kClusterKv, 512), doc);
    const Run q = Generate(Options(PolicyKind::kQuest, 512), doc);
    std::printf("doc %d: attention mass covered at budget 512, clusterkv %.3f quest %.3f\n", i, SparseMass(c),
                SparseMass(q));
    EXPECT_GE(SparseMass(c), SparseMass(q)) << "doc " << i;
    EXPECT_EQ(c.text, doc.answer) << "doc " << i;
    EXPECT_GT(c.counters[3].hit_rate(), 0.0);
  }
}

TEST_F(TrainedModelTest, AttentionErrorFallsAsTheBudgetGrows) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 1).value();
  double previous = 1e9;
  for (int32_t budget : {512, 768, 1024, 1536, 4096}) {
    const Run r = Generate(Options(PolicyKind::kClusterKv, budget), doc);
    std::printf("budget %d: mean relative attention error (layer 2) %.4f\n", budget, r.error);
    EXPECT_LE(r.error, previous + 1e-9) << "budget " << budget;
    previous = r.error;
  }
  EXPECT_EQ(previous, 0.0);  // a budget covering the whole context selects every token
}

TEST_F(TrainedModelTest, WholeContextBudgetSelectsEveryTokenAndMatchesFull) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/vartrack_1024.jsonl", 2).value();
  const std::vector<int32_t> prompt = ByteIds(doc.prompt, true);
  HostAllocator host;
  std::vector<std::vector<float>> logits(2);
  int i = 0;
  for (PolicyKind kind : {PolicyKind::kFull, PolicyKind::kClusterKv}) {
    PolicyOptions o = Options(kind, 8192);
    auto pool = CreateKvPagePool(model_->config, o, prompt.size() + 16, &host).value();
    auto kv = PolicyKvContext::Create(model_->config, o, pool.get(), nullptr).value();
    std::vector<float> l;
    ASSERT_TRUE(model_->transformer->Forward(prompt, kv.get(), false, &l).ok());
    for (int step = 0; step < 4; ++step) {
      const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ASSERT_TRUE(model_->transformer->Forward({&next, 1}, kv.get(), false, &l).ok());
      for (int layer = 0; layer < 4; ++layer) EXPECT_DOUBLE_EQ(kv->counters()[layer].mean_mass(), 1.0);
    }
    if (kind == PolicyKind::kClusterKv) {
      EXPECT_GT(kv->sequence().head(2, 0).num_clusters(), 0);
    }
    logits[i++] = l;
  }
  // The same tokens are attended; only the order of accumulation differs (clusters are stored by topic).
  float mx = 0, diff = 0;
  for (size_t v = 0; v < logits[0].size(); ++v) {
    mx = std::max(mx, std::abs(logits[0][v]));
    diff = std::max(diff, std::abs(logits[0][v] - logits[1][v]));
  }
  EXPECT_LE(diff, 1e-5 * mx);
}

TEST_F(TrainedModelTest, SpeculationWithEveryHeadCorrectedIsSynchronousRecall) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 4).value();
  PolicyOptions sync = Options(PolicyKind::kClusterKv, 512);
  sync.measure_attention_mass = false;
  PolicyOptions spec = sync;
  spec.speculative = true;
  spec.correction_threshold = 1.0f;
  const Run a = Generate(sync, doc), b = Generate(spec, doc);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(b.text, doc.answer);
  // Every sparse layer checks every KV head at every decode step after the first, and corrects each.
  const int64_t steps = static_cast<int64_t>(doc.answer.size());
  for (int layer : {2, 3}) {
    EXPECT_EQ(b.counters[layer].correction_checks, (steps - 1) * model_->config.num_kv_heads) << layer;
    EXPECT_EQ(b.counters[layer].corrections, b.counters[layer].correction_checks) << layer;
    EXPECT_EQ(a.counters[layer].correction_checks, 0);
  }
  for (int layer : {0, 1}) EXPECT_EQ(b.counters[layer].correction_checks, 0);  // dense layers
}

TEST_F(TrainedModelTest, SpeculationWithAWholeContextBudgetAttendsEveryTokenAcrossReclustering) {
  // Pure speculation (never corrected) reuses the previous step's cluster list. Clusters formed in between from
  // tokens that left the recent window were attended through the window when that list was made, so they must
  // still be attended: with a budget covering the whole context every step covers all of the attention mass.
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_1024.jsonl", 3).value();
  PolicyOptions o = Options(PolicyKind::kClusterKv, 8192);
  o.speculative = true;
  o.correction_threshold = -1.0f;
  o.window = 32;
  o.cluster_window = 64;  // decode re-clusters every 64 generated tokens
  o.window_clusters = 2;
  const std::vector<int32_t> prompt = ByteIds(doc.prompt, true);
  HostAllocator host;
  const int steps = 200;
  auto pool = CreateKvPagePool(model_->config, o, prompt.size() + steps + 16, &host).value();
  auto kv = PolicyKvContext::Create(model_->config, o, pool.get(), nullptr).value();
  std::vector<float> l;
  ASSERT_TRUE(model_->transformer->Forward(prompt, kv.get(), false, &l).ok());
  const int32_t clusters_after_prefill = kv->sequence().head(2, 0).num_clusters();
  for (int step = 0; step < steps; ++step) {
    const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    ASSERT_TRUE(model_->transformer->Forward({&next, 1}, kv.get(), false, &l).ok());
    for (int layer : {2, 3}) ASSERT_DOUBLE_EQ(kv->counters()[layer].mean_mass(), 1.0) << "step " << step;
  }
  EXPECT_GT(kv->sequence().head(2, 0).num_clusters(), clusters_after_prefill);  // decode did re-cluster
  EXPECT_EQ(kv->counters()[2].corrections, 0);
}

TEST_F(TrainedModelTest, SpeculationReusesThePreviousSelectionForStableQueries) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_2048.jsonl", 5).value();
  PolicyOptions spec = Options(PolicyKind::kClusterKv, 512);
  spec.speculative = true;
  spec.correction_threshold = -1.0f;  // never correct: pure speculation
  const Run r = Generate(spec, doc);
  for (int layer : {2, 3}) {
    EXPECT_GT(r.counters[layer].correction_checks, 0);
    EXPECT_EQ(r.counters[layer].corrections, 0);
  }
  spec.correction_threshold = 0.8f;
  const Run tau = Generate(spec, doc);
  EXPECT_EQ(tau.text, doc.answer);
  std::printf("tau 0.8: correction rate layer 2 %.2f, layer 3 %.2f; mean query cosine %.3f, %.3f\n",
              tau.counters[2].correction_rate(), tau.counters[3].correction_rate(), tau.counters[2].mean_cosine(),
              tau.counters[3].mean_cosine());
}

TEST(PolicyKvContextTest, FullPolicyIsBitwiseTheDenseCache) {
  ModelConfig c = PresetConfig("tiny").value();
  c.num_layers = 2;
  CpuBackend backend(CpuBackendOptions{.num_threads = 2});
  auto model =
      Transformer::Create(c, DummyWeights(c, 5, &backend, 0.1f).value(), &backend, TransformerOptions{.max_chunk = 64})
          .value();
  PolicyOptions o;
  o.kind = PolicyKind::kFull;
  o.kv_dtype = DType::kBF16;
  HostAllocator host;
  auto pool = CreateKvPagePool(c, o, 400, &host).value();
  auto policy_kv = PolicyKvContext::Create(c, o, pool.get(), nullptr).value();
  auto dense = DenseKvCache::Create(c, &backend, DType::kBF16).value();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 300; ++i) prompt.push_back((i * 31) % 256);
  std::vector<float> a, b;
  ASSERT_TRUE(model->Forward(prompt, policy_kv.get(), true, &a).ok());
  ASSERT_TRUE(model->Forward(prompt, dense.get(), true, &b).ok());
  EXPECT_EQ(a, b);
  for (int step = 0; step < 5; ++step) {
    const int32_t t[] = {step + 40};
    ASSERT_TRUE(model->Forward(t, policy_kv.get(), false, &a).ok());
    ASSERT_TRUE(model->Forward(t, dense.get(), false, &b).ok());
    EXPECT_EQ(a, b) << "step " << step;
  }
}

TEST(PolicyKvContextTest, RejectsMismatchedQueriesAndClusterKvWithSlidingWindows) {
  ModelConfig c = PresetConfig("tiny").value();
  PolicyOptions o;
  HostAllocator host;
  auto pool = CreateKvPagePool(c, o, 64, &host).value();
  auto kv = PolicyKvContext::Create(c, o, pool.get(), nullptr).value();
  CpuBackend backend(CpuBackendOptions{.num_threads = 1});
  Tensor q = backend.Allocate(DType::kF32, {1, 3, 32}).value();  // tiny has 4 query heads
  ContextKv ctx;
  absl::Status s = kv->Select(2, q.view(), &ctx);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("[1, 3, 32]"));
  c.sliding_window = 64;
  s = PolicyKvContext::Create(c, o, pool.get(), nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("sliding_window"));
}

}  // namespace
}  // namespace livekv
