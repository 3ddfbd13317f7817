// The GPU recall path against the GPU dense path, and the recalled bytes against the pinned pages.
#include "engine/cuda/recall_kv_context.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>

#include "cuda/testing/test_util.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/transformer.h"

namespace livekv {
namespace {

ModelConfig SmallModel() {
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.max_position_embeddings = 8192;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  return c;
}

PolicyOptions SmallPolicy(int32_t budget) {
  PolicyOptions p;
  p.kind = PolicyKind::kClusterKv;
  p.budget = budget;
  p.sink = 16;
  p.window = 64;
  p.page_tokens = 32;
  p.cluster_window = 128;
  p.tokens_per_cluster = 16;
  p.window_clusters = 8;
  p.kmeans_iterations = 8;
  p.dense_layers = {0, 1};
  p.kv_dtype = DType::kBF16;
  return p;
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

double RelErr(const std::vector<float>& got, const std::vector<float>& want) {
  double d = 0, m = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    d = std::max(d, std::isfinite(got[i]) ? std::abs(double(got[i]) - want[i]) : INFINITY);
    m = std::max(m, std::abs(double(want[i])));
  }
  return d / m;
}

int32_t Argmax(const std::vector<float>& x) { return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin()); }

class RecallTest : public cuda::testing::GpuTest {
 protected:
  void SetUp() override {
    cuda::testing::GpuTest::SetUp();
    if (IsSkipped()) return;
    gpu_ = CudaBackend::Create().value();
    config_ = SmallModel();
  }
  std::unique_ptr<Transformer> Model() {
    // stddev 0.2: attention that is far from uniform, so selecting the wrong tokens would show in the logits.
    auto w = CudaDummyWeights(config_, 11, gpu_.get(), 0.2f);
    EXPECT_TRUE(w.ok()) << w.status();
    return Transformer::Create(config_, std::move(*w), gpu_.get(), TransformerOptions{.max_chunk = 256}).value();
  }
  // Every attended cluster's bytes on the device equal its pinned pages.
  void ExpectRecalledBytesMatch(const CudaRecallKvContext& kv, bool planned, const std::string& what) {
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    int checked = 0;
    for (int layer = 2; layer < config_.num_layers; ++layer) {
      for (int h = 0; h < config_.num_kv_heads; ++h) {
        std::set<std::pair<int32_t, int32_t>> seen;
        for (const auto& a : kv.LastAttended(layer, h, planned)) {
          EXPECT_TRUE(seen.insert({a.cluster, a.page}).second) << what << ": cluster " << a.cluster << " twice";
          std::vector<uint8_t> dev(a.bytes);
          ASSERT_EQ(cudaMemcpy(dev.data(), a.device, a.bytes, cudaMemcpyDefault), cudaSuccess);
          // K rows and V rows of the page's tokens (K rows past them in a partly filled page are unused).
          const size_t row = 128 * 2;
          const bool same = std::memcmp(dev.data(), a.host, a.tokens * row) == 0 &&
                            std::memcmp(dev.data() + 32 * row, a.host + 32 * row, a.tokens * row) == 0;
          EXPECT_TRUE(same) << what << ": layer " << layer << " head " << h << " cluster " << a.cluster << " page "
                            << a.page;
          ++checked;
        }
      }
    }
    EXPECT_GT(checked, 0) << what << ": no recalled clusters to check";
  }
  std::unique_ptr<CudaBackend> gpu_;
  ModelConfig config_;
};

TEST_F(RecallTest, WholeContextBudgetMatchesTheDensePath) {
  auto sparse_model = Model();
  auto dense_model = Model();
  RecallOptions o;
  o.policy = SmallPolicy(/*budget=*/100000);
  o.max_tokens = 2048;
  o.cache_tokens_per_head = 4096;
  auto kv = CudaRecallKvContext::Create(config_, o, gpu_.get());
  ASSERT_TRUE(kv.ok()) << kv.status();
  auto dense = DenseKvCache::Create(config_, gpu_.get(), DType::kBF16).value();
  const std::vector<int32_t> prompt = RandomTokens(700, config_.vocab_size, 3);
  (*kv)->ExpectInputEnd(static_cast<int64_t>(prompt.size()));
  std::vector<float> a, b;
  ASSERT_TRUE(sparse_model->Forward(prompt, kv->get(), false, &a).ok());
  ASSERT_TRUE(dense_model->Forward(prompt, dense.get(), false, &b).ok());
  EXPECT_LE(RelErr(a, b), 1e-2) << "prefill";
  EXPECT_GT((*kv)->num_clusters(2), 0) << "the prompt was not clustered";
  EXPECT_LT((*kv)->tail_rows(2), 200);
  EXPECT_EQ((*kv)->tail_rows(0), 700) << "dense layers keep everything on the device";
  for (int step = 0; step < 6; ++step) {
    const int32_t t[] = {Argmax(b)};
    ASSERT_TRUE(sparse_model->Forward(t, kv->get(), false, &a).ok());
    ASSERT_TRUE(dense_model->Forward(t, dense.get(), false, &b).ok());
    const double err = RelErr(a, b);
    EXPECT_LE(err, 1e-2) << "decode step " << step;
    std::printf("RECALL whole-budget step %d: rel err %.2e vs the dense path\n", step, err);
  }
  ExpectRecalledBytesMatch(**kv, false, "whole budget");
  EXPECT_EQ((*kv)->counters().clusters_zero_copy, 0);
}

TEST_F(RecallTest, SmallBudgetRecallsExactlyWhatTheSelectionNames) {
  auto model = Model();
  RecallOptions o;
  o.policy = SmallPolicy(/*budget=*/256);
  o.max_tokens = 2048;
  o.speculative = false;
  auto kv = CudaRecallKvContext::Create(config_, o, gpu_.get()).value();
  const std::vector<int32_t> prompt = RandomTokens(900, config_.vocab_size, 4);
  std::vector<float> logits;
  ASSERT_TRUE(model->Forward(prompt, kv.get(), false, &logits).ok());
  ASSERT_TRUE(kv->FinishAppend().ok());  // no ExpectInputEnd: cluster at the settle point
  ASSERT_GT(kv->num_clusters(3), 0);
  for (int step = 0; step < 4; ++step) {
    const int32_t t[] = {Argmax(logits)};
    ASSERT_TRUE(model->Forward(t, kv.get(), false, &logits).ok());
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    ExpectRecalledBytesMatch(*kv, false, "step " + std::to_string(step));
    for (int layer = 2; layer < 4; ++layer) {
      for (int h = 0; h < 2; ++h) {
        int64_t tokens = 0;
        for (const auto& a : kv->LastAttended(layer, h)) tokens += a.tokens;
        EXPECT_GT(tokens, 0);
        // The step attended the tail as it was before the step's own token was appended (one row fewer now).
        EXPECT_LE(tokens + kv->tail_rows(layer) - 1, 256) << "over budget at layer " << layer << " head " << h;
      }
    }
  }
  const RecallCounters& c = kv->counters();
  EXPECT_EQ(c.sync_selections, c.sparse_selections);
  EXPECT_GT(c.clusters_recalled, 0);
  std::printf("RECALL small budget: %lld selections, %lld clusters attended, %lld hits, %lld recalled, %lld copies\n",
              (long long)c.sparse_selections, (long long)c.clusters_selected, (long long)c.clusters_hit,
              (long long)c.clusters_recalled, (long long)c.copies);
}

TEST_F(RecallTest, SpeculativeSelectionOfStepTIsWhatStepTPlusOneAttends) {
  auto model = Model();
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  std::vector<RecallCopy> copies = {RecallCopy::kGather, RecallCopy::kBatch, RecallCopy::kPerRun};
  if (major >= 9) copies.push_back(RecallCopy::kBulk);
  for (RecallCopy copy : copies) {
    RecallOptions o;
    o.policy = SmallPolicy(/*budget=*/256);
    o.max_tokens = 0;  // pinned arenas on demand
    o.copy = copy;
    auto kv = CudaRecallKvContext::Create(config_, o, gpu_.get()).value();
    const std::vector<int32_t> prompt = RandomTokens(900, config_.vocab_size, 5);
    kv->ExpectInputEnd(static_cast<int64_t>(prompt.size()));
    std::vector<float> logits;
    ASSERT_TRUE(model->Forward(prompt, kv.get(), false, &logits).ok());
    std::vector<std::vector<int32_t>> planned;
    for (int step = 0; step < 6; ++step) {
      const int32_t t[] = {Argmax(logits)};
      ASSERT_TRUE(model->Forward(t, kv.get(), false, &logits).ok());
      for (float x : logits) ASSERT_TRUE(std::isfinite(x));
      if (!planned.empty()) {
        for (int layer = 2, i = 0; layer < 4; ++layer) {
          for (int h = 0; h < 2; ++h, ++i) {
            std::vector<int32_t> got;
            for (const auto& a : kv->LastAttended(layer, h)) {
              if (a.page == 0) got.push_back(a.cluster);
            }
            EXPECT_EQ(got, planned[i]) << "step " << step << " layer " << layer << " head " << h;
          }
        }
      }
      ExpectRecalledBytesMatch(*kv, true, "planned after step " + std::to_string(step));
      planned.clear();
      for (int layer = 2; layer < 4; ++layer) {
        for (int h = 0; h < 2; ++h) {
          std::vector<int32_t> p;
          for (const auto& a : kv->LastAttended(layer, h, true)) {
            if (a.page == 0) p.push_back(a.cluster);
          }
          planned.push_back(p);
        }
      }
    }
    const RecallCounters& c = kv->counters();
    EXPECT_EQ(c.sync_selections, 2) << "only the first decode step of each sparse layer selects synchronously";
    EXPECT_GT(c.clusters_hit, 0);
    std::printf("RECALL speculative (%s): %lld selections (%lld sync), %lld attended, %lld hits, %lld recalled, "
                "%lld copies, %.1f KiB\n",
                copy == RecallCopy::kGather ? "gather" : copy == RecallCopy::kBatch ? "batch" : copy == RecallCopy::kBulk ? "bulk" : "per-run", (long long)c.sparse_selections,
                (long long)c.sync_selections, (long long)c.clusters_selected, (long long)c.clusters_hit,
                (long long)c.clusters_recalled, (long long)c.copies, c.bytes_recalled / 1024.0);
  }
}

TEST_F(RecallTest, TimelineMarksEachLayerInStreamOrder) {
  auto model = Model();
  RecallOptions o;
  o.policy = SmallPolicy(/*budget=*/256);
  auto kv = CudaRecallKvContext::Create(config_, o, gpu_.get()).value();
  EXPECT_EQ(kv->LastStepTimeline().status().code(), absl::StatusCode::kFailedPrecondition);
  const std::vector<int32_t> prompt = RandomTokens(900, config_.vocab_size, 6);
  kv->ExpectInputEnd(static_cast<int64_t>(prompt.size()));
  std::vector<float> logits;
  ASSERT_TRUE(model->Forward(prompt, kv.get(), false, &logits).ok());
  for (int step = 0; step < 4; ++step) {
    kv->set_timeline(step >= 2);
    const int32_t t[] = {Argmax(logits)};
    ASSERT_TRUE(model->Forward(t, kv.get(), false, &logits).ok());
  }
  const auto tl = kv->LastStepTimeline();
  ASSERT_TRUE(tl.ok()) << tl.status();
  ASSERT_EQ(tl->size(), static_cast<size_t>(config_.num_layers));
  constexpr double kSlack = 0.01;  // ms: events on different streams, timer resolution
  double last = 0;
  for (const auto& l : *tl) {
    const std::string what = "layer " + std::to_string(l.layer);
    EXPECT_EQ(l.sparse, l.layer >= 2) << what;  // SmallPolicy keeps layers 0 and 1 dense
    EXPECT_GE(l.queries, last - kSlack) << what;  // the compute stream's layers in order
    EXPECT_GE(l.attended, l.queries) << what;
    last = l.attended;
    if (!l.sparse) {
      EXPECT_EQ(l.select_begin, -1) << what;
      continue;
    }
    EXPECT_GE(l.attend, l.queries) << what;
    EXPECT_GE(l.attended, l.attend) << what;
    EXPECT_GE(l.select_begin, l.queries - kSlack) << what;  // the speculative selection reads this step's queries
    EXPECT_GE(l.select_end, l.select_begin) << what;
    if (l.recall_begin >= 0) {  // misses recalled: after the attention that may read the pages they replace
      EXPECT_GE(l.recall_begin, l.attended - kSlack) << what;
      EXPECT_GE(l.recall_end, l.recall_begin) << what;
    }
  }
}

// A chunk rolled back after its clusterings started (and some were stored to pinned memory as their k-means ended):
// nothing of it stays, its pinned runs are freed, and the same prompt then prefills and clusters as usual.
TEST_F(RecallTest, RollbackDropsTheChunksClusterings) {
  RecallOptions o;
  o.policy = SmallPolicy(/*budget=*/256);
  auto kv = CudaRecallKvContext::Create(config_, o, gpu_.get()).value();
  const int64_t n = 600;
  const int64_t hq = config_.num_heads, hkv = config_.num_kv_heads, d = config_.head_dim;
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto random_tensor = [&](int64_t heads) {
    Tensor t = gpu_->Allocate(DType::kBF16, Shape{n, heads, d}).value();
    std::vector<__nv_bfloat16> host(static_cast<size_t>(n) * heads * d);
    for (auto& x : host) x = __float2bfloat16(u(rng));
    EXPECT_EQ(cudaMemcpy(t.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    return t;
  };
  const Tensor q = random_tensor(hq), k = random_tensor(hkv), v = random_tensor(hkv);
  kv->ExpectInputEnd(n);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    ContextKv ctx;
    ASSERT_TRUE(kv->Select(layer, q.view(), &ctx).ok());
    ASSERT_TRUE(kv->Append(layer, k.view(), v.view()).ok());
  }
  kv->Rollback();
  EXPECT_EQ(kv->host_bytes_in_use(), 0u) << "the rolled-back clusterings' pinned runs are freed";
  EXPECT_EQ(kv->num_clusters(2), 0);
  EXPECT_EQ(kv->tail_rows(2), 0);

  auto model = Model();
  const std::vector<int32_t> prompt = RandomTokens(static_cast<int>(n), config_.vocab_size, 7);
  kv->ExpectInputEnd(n);
  std::vector<float> logits;
  ASSERT_TRUE(model->Forward(prompt, kv.get(), false, &logits).ok());
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_GT(kv->num_clusters(2), 0);
  EXPECT_GT(kv->host_bytes_in_use(), 0u);
}

TEST_F(RecallTest, RejectsWhatItCannotServe) {
  RecallOptions o;
  o.policy = SmallPolicy(256);
  o.policy.kv_dtype = DType::kF32;
  EXPECT_EQ(CudaRecallKvContext::Create(config_, o, gpu_.get()).status().code(), absl::StatusCode::kInvalidArgument);
  o.policy = SmallPolicy(256);
  o.policy.kind = PolicyKind::kQuest;
  EXPECT_EQ(CudaRecallKvContext::Create(config_, o, gpu_.get()).status().code(), absl::StatusCode::kInvalidArgument);
  o.policy = SmallPolicy(256);
  ModelConfig windowed = config_;
  windowed.sliding_window = 64;
  EXPECT_EQ(CudaRecallKvContext::Create(windowed, o, gpu_.get()).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
