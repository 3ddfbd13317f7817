#include "kvcache/policy_kv_context.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {
KvGeometry GeometryFor(const ModelConfig& config, const PolicyOptions& options) {
  KvGeometry g;
  g.num_layers = static_cast<int32_t>(config.num_layers);
  g.num_kv_heads = static_cast<int32_t>(config.num_kv_heads);
  g.layout.page_tokens = options.page_tokens;
  g.layout.head_dim = static_cast<int32_t>(config.head_dim);
  g.layout.dtype = options.kv_dtype;
  g.sink_tokens = options.sink;
  return g;
}

namespace {

float LoadF32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return BF16ToF32(static_cast<const uint16_t*>(p)[i]);
    default: return F16ToF32(static_cast<const uint16_t*>(p)[i]);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PagePool>> CreateKvPagePool(const ModelConfig& config, const PolicyOptions& options,
                                                           int64_t max_tokens, Allocator* allocator) {
  const KvGeometry g = GeometryFor(config, options);
  LIVEKV_RETURN_IF_ERROR(g.Validate());
  const int64_t heads = int64_t{g.num_layers} * g.num_kv_heads;
  // Positional pages, plus one partial page per cluster (at most one cluster per page_tokens/2 tokens on
  // average in practice), plus the sink.
  const int64_t pages_per_head = g.layout.PagesFor(max_tokens) * 2 + g.layout.PagesFor(g.sink_tokens) + 2;
  PagePool::Options o;
  o.page_bytes = g.layout.page_bytes();
  o.capacity_bytes = static_cast<size_t>(pages_per_head * heads) * o.page_bytes;
  return PagePool::Create(allocator, o);
}

PolicyKvContext::PolicyKvContext(const ModelConfig& config, std::unique_ptr<SequenceKv> kv,
                                 std::unique_ptr<KvPolicy> policy)
    : config_(config),
      kv_(std::move(kv)),
      speculation_(config.num_layers),
      policy_(std::move(policy)),
      sparse_prefill_(policy_->options().sparse_prefill),
      counters_(config.num_layers),
      previous_clusters_(static_cast<size_t>(config.num_layers) * config.num_kv_heads) {}

absl::StatusOr<std::unique_ptr<PolicyKvContext>> PolicyKvContext::Create(const ModelConfig& config,
                                                                         const PolicyOptions& options,
                                                                         PagePool* pool, ThreadPool* threads) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  if (config.sliding_window > 0 && options.kind == PolicyKind::kClusterKv) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy clusterkv cannot serve a sliding-window model (sliding_window = ", config.sliding_window,
        "): clusters mix positions"));
  }
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<KvPolicy> policy,
                          CreatePolicy(options, static_cast<int32_t>(config.num_layers),
                                       static_cast<int32_t>(config.group_size()), threads));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<SequenceKv> kv, SequenceKv::Create(GeometryFor(config, options), pool));
  return std::unique_ptr<PolicyKvContext>(new PolicyKvContext(config, std::move(kv), std::move(policy)));
}

absl::StatusOr<std::unique_ptr<PolicyKvContext>> PolicyKvContext::Adopt(const ModelConfig& config,
                                                                        const PolicyOptions& options,
                                                                        std::unique_ptr<SequenceKv> kv,
                                                                        ThreadPool* threads) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  const KvGeometry want = GeometryFor(config, options), have = kv->geometry();
  if (want.num_layers != have.num_layers || want.num_kv_heads != have.num_kv_heads ||
      want.layout.head_dim != have.layout.head_dim || want.layout.page_tokens != have.layout.page_tokens ||
      want.layout.dtype != have.layout.dtype || want.sink_tokens != have.sink_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the sequence's geometry (layers ", have.num_layers, ", kv heads ", have.num_kv_heads, ", head_dim ",
        have.layout.head_dim, ", page_tokens ", have.layout.page_tokens, ", dtype ", DTypeName(have.layout.dtype),
        ", sink ", have.sink_tokens, ") is not the model's under this policy (layers ", want.num_layers,
        ", kv heads ", want.num_kv_heads, ", head_dim ", want.layout.head_dim, ", page_tokens ",
        want.layout.page_tokens, ", dtype ", DTypeName(want.layout.dtype), ", sink ", want.sink_tokens, ")"));
  }
  if (config.sliding_window > 0 && options.kind == PolicyKind::kClusterKv) {
    return absl::InvalidArgumentError("policy clusterkv cannot serve a sliding-window model");
  }
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<KvPolicy> policy,
                          CreatePolicy(options, static_cast<int32_t>(config.num_layers),
                                       static_cast<int32_t>(config.group_size()), threads));
  return std::unique_ptr<PolicyKvContext>(new PolicyKvContext(config, std::move(kv), std::move(policy)));
}

Maintenance PolicyKvContext::TakeMaintenanceLog() {
  Maintenance out = std::move(log_);
  log_ = Maintenance{};
  return out;
}

absl::Status PolicyKvContext::Select(int layer, TensorView q, ContextKv* ctx) {
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ", config_.num_layers, ")"));
  }
  if (q.dtype != DType::kF32 || q.rank() != 3 || q.dim(1) != config_.num_heads || q.dim(2) != config_.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("queries must be F32 [n, ", config_.num_heads, ", ",
                                                   config_.head_dim, "], saw ", DTypeName(q.dtype), " ",
                                                   ShapeToString(q.shape)));
  }
  if (!chunk_started_) {
    // A decode step is a settle point.
    if (q.dim(0) == 1) LIVEKV_RETURN_IF_ERROR(Maintain([&] { return policy_->AtSettlePoint(*kv_); }));
    chunk_started_ = true;
  }
  const ChunkQueries queries{q.as<float>(), q.dim(0), static_cast<int32_t>(config_.num_heads),
                             static_cast<int32_t>(config_.head_dim), sparse_prefill_};
  LayerSelection sel;
  LIVEKV_RETURN_IF_ERROR(policy_->Select(*kv_, layer, queries, &sel));
  if (policy_->options().speculative && q.dim(0) == 1 && !sel.dense) {
    LIVEKV_RETURN_IF_ERROR(SelectSpeculative(layer, queries, &sel));
  } else {
    speculation_[layer].valid = false;  // a prefill chunk, or a dense step: nothing to speculate from
    if (fetcher_ != nullptr) LIVEKV_RETURN_IF_ERROR(fetcher_->EnsureResident(*kv_, layer, sel));
  }
  ctx->dtype = kv_->geometry().layout.dtype;
  ctx->heads.resize(config_.num_kv_heads);
  for (int32_t h = 0; h < config_.num_kv_heads; ++h) {
    ctx->heads[h].clear();
    kv_->AppendRuns(layer, h, sel.heads[h], &ctx->heads[h]);
  }
  if (q.dim(0) == 1) Count(layer, queries, sel);
  return absl::OkStatus();
}

absl::Status PolicyKvContext::SelectSpeculative(int32_t layer, const ChunkQueries& q, LayerSelection* sel) {
  // `sel` arrives as the selection made with this step's query: the one FreeKV would make for the next step.
  Speculation& spec = speculation_[layer];
  const LayerSelection fresh = *sel;
  if (spec.valid) {
    // Per KV head: attend to the clusters chosen with the previous query unless the query drifted; the sink and
    // the positional pages (always attended) come from the current state.
    const int32_t group = static_cast<int32_t>(config_.group_size()), d = q.head_dim;
    const float tau = policy_->options().correction_threshold;
    LayerCounters& c = counters_[layer];
    for (int32_t h = 0; h < static_cast<int32_t>(sel->heads.size()); ++h) {
      double cosine = 0;
      for (int32_t j = 0; j < group; ++j) {
        const float* now = q.q + (static_cast<int64_t>(h) * group + j) * d;
        const float* before = spec.q.data() + (static_cast<int64_t>(h) * group + j) * d;
        double dot = 0, a = 0, b = 0;
        for (int32_t i = 0; i < d; ++i) {
          dot += double(now[i]) * before[i];
          a += double(now[i]) * now[i];
          b += double(before[i]) * before[i];
        }
        cosine += dot / std::max(1e-30, std::sqrt(a * b));
      }
      cosine /= group;
      const bool corrected = tau >= 1.0f || cosine < tau;
      ++c.correction_checks;
      c.cosine_sum += cosine;
      if (corrected) {
        ++c.corrections;
      } else {
        // Clusters formed since (ids are appended) hold tokens that were in the recent window, so attended, when
        // the previous selection was made: they stay attended.
        std::vector<int32_t>& clusters = sel->heads[h].clusters;
        clusters = spec.selection.heads[h].clusters;
        for (int32_t id = spec.clusters_before[h]; id < kv_->head(layer, h).num_clusters(); ++id) {
          clusters.push_back(id);
        }
      }
    }
  }
  // The blocks attended now: prefetched last step (wait for them), plus those of corrected heads (fetched now).
  if (fetcher_ != nullptr) LIVEKV_RETURN_IF_ERROR(fetcher_->EnsureResident(*kv_, layer, *sel));
  // Speculate for the next step with this step's query, and start recalling its blocks.
  spec.valid = true;
  spec.selection = fresh;
  spec.q.assign(q.q, q.q + static_cast<int64_t>(q.num_heads) * q.head_dim);
  spec.clusters_before.resize(sel->heads.size());
  for (int32_t h = 0; h < static_cast<int32_t>(sel->heads.size()); ++h) {
    spec.clusters_before[h] = kv_->head(layer, h).num_clusters();
  }
  if (fetcher_ != nullptr) LIVEKV_RETURN_IF_ERROR(fetcher_->Prefetch(*kv_, layer, fresh));
  return absl::OkStatus();
}

void PolicyKvContext::Count(int32_t layer, const ChunkQueries& q, const LayerSelection& sel) {
  LayerCounters& c = counters_[layer];
  ++c.steps;
  const size_t token_bytes = 2 * kv_->geometry().layout.row_bytes();
  for (int32_t h = 0; h < config_.num_kv_heads; ++h) {
    const HeadSelection& s = sel.heads[h];
    const int64_t tokens = kv_->SelectionTokens(layer, h, s);
    ++c.head_steps;
    c.tokens_selected += tokens;
    c.bytes_selected += tokens * token_bytes;
    std::vector<int32_t>& prev = previous_clusters_[static_cast<size_t>(layer) * config_.num_kv_heads + h];
    if (!s.clusters.empty() && !prev.empty()) {
      c.clusters_selected += s.clusters.size();
      std::vector<int32_t> both;
      std::set_intersection(s.clusters.begin(), s.clusters.end(), prev.begin(), prev.end(), std::back_inserter(both));
      c.clusters_hit += both.size();
    }
    prev = s.clusters;
    if (policy_->options().measure_attention_mass) {
      c.attention_mass += AttentionMass(layer, h, q.Group(h, static_cast<int32_t>(config_.group_size())), s);
      ++c.mass_samples;
    }
  }
}

double PolicyKvContext::AttentionMass(int32_t layer, int32_t head, const QueryGroup& q,
                                      const HeadSelection& sel) const {
  // Dense attention probabilities over every cached token, summed over the selected ones; mean over the group.
  const HeadSelection all = kv_->SelectAll(layer, head);
  std::vector<KvRun> runs;
  kv_->AppendRuns(layer, head, all, &runs);
  const std::vector<int64_t> positions = kv_->SelectionPositions(layer, head, all);
  const std::vector<int64_t> chosen = kv_->SelectionPositions(layer, head, sel);
  const std::unordered_set<int64_t> chosen_set(chosen.begin(), chosen.end());
  if (positions.empty()) return 1.0;
  const DType t = kv_->geometry().layout.dtype;
  const int32_t d = q.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  double total_mass = 0;
  std::vector<double> scores(positions.size());
  for (int32_t j = 0; j < q.count(); ++j) {
    const float* qv = q.vec(j);
    size_t i = 0;
    double mx = -1e300;
    for (const KvRun& r : runs) {
      for (int32_t row = 0; row < r.n; ++row, ++i) {
        double s = 0;
        for (int32_t c = 0; c < d; ++c) s += double(qv[c]) * LoadF32(r.k, t, int64_t{row} * d + c);
        scores[i] = s * scale;
        mx = std::max(mx, scores[i]);
      }
    }
    double sum = 0, covered = 0;
    for (size_t k = 0; k < scores.size(); ++k) {
      const double p = std::exp(scores[k] - mx);
      sum += p;
      if (chosen_set.count(positions[k])) covered += p;
    }
    total_mass += covered / sum;
  }
  return total_mass / q.count();
}

absl::Status PolicyKvContext::Append(int layer, TensorView k, TensorView v) {
  const Shape want{k.rank() > 0 ? k.dim(0) : 0, config_.num_kv_heads, config_.head_dim};
  if (k.shape != want || v.shape != want || k.dtype != v.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("KV append to layer ", layer, ": k ", ShapeToString(k.shape),
                                                   " and v ", ShapeToString(v.shape), " must be ",
                                                   ShapeToString(want)));
  }
  return kv_->Append(layer, k.data, v.data, k.dim(0), k.dtype);
}

absl::Status PolicyKvContext::Commit(int64_t n) {
  chunk_started_ = false;
  LIVEKV_RETURN_IF_ERROR(kv_->Commit(n));
  return Maintain([&] { return policy_->AfterCommit(*kv_); });
}

absl::Status PolicyKvContext::FinishAppend() {
  if (chunk_started_) return absl::FailedPreconditionError("FinishAppend in the middle of a chunk");
  return Maintain([&] { return policy_->AtSettlePoint(*kv_); });
}

absl::Status PolicyKvContext::Maintain(absl::FunctionRef<absl::StatusOr<Maintenance>()> make_plan) {
  const auto t0 = std::chrono::steady_clock::now();
  const absl::StatusOr<Maintenance> plan = make_plan();  // the clustering itself (k-means) runs here
  if (!plan.ok() || plan->empty()) {
    maintenance_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return plan.status();
  }
  // Blocks are about to move or be freed: no recall may still be writing into them.
  if (fetcher_ != nullptr) LIVEKV_RETURN_IF_ERROR(fetcher_->Drain());
  absl::Status s = ApplyMaintenance(kv_.get(), *plan);
  maintenance_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (s.ok()) {
    for (const HeadClustering& c : plan->clusterings) log_.clusterings.push_back(c);
    log_.drop_pages += plan->drop_pages;
  }
  return s;
}

void PolicyKvContext::Rollback() {
  chunk_started_ = false;
  for (Speculation& s : speculation_) s.valid = false;
  kv_->Rollback();
}

}  // namespace livekv
