// The four policies. Budget accounting (policy_options.h): `budget` cached tokens per (layer, KV head), sink and
// recent window included.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/policy.h"

namespace livekv {

absl::Status ApplyMaintenance(SequenceKv* kv, const Maintenance& m) {
  if (!m.clusterings.empty()) LIVEKV_RETURN_IF_ERROR(kv->ApplyClustering(m.clusterings));
  if (m.drop_pages > 0) LIVEKV_RETURN_IF_ERROR(kv->DropPages(m.drop_pages));
  return absl::OkStatus();
}

bool KvPolicy::IsDenseLayer(int32_t layer) const {
  return std::find(options_.dense_layers.begin(), options_.dense_layers.end(), layer) != options_.dense_layers.end();
}

void KvPolicy::SelectEverything(const SequenceKv& kv, int32_t layer, LayerSelection* out) const {
  const int32_t heads = kv.geometry().num_kv_heads;
  out->heads.resize(heads);
  out->dense = true;
  for (int32_t h = 0; h < heads; ++h) out->heads[h] = kv.SelectAll(layer, h);
}

namespace {

class FullPolicy : public KvPolicy {
 public:
  explicit FullPolicy(const PolicyOptions& options) : KvPolicy(options) {}
  absl::Status Select(const SequenceKv& kv, int32_t layer, const ChunkQueries&, LayerSelection* out) override {
    SelectEverything(kv, layer, out);
    return absl::OkStatus();
  }
};

// The most recent `tokens` committed positional rows of a head, as page row ranges.
void SelectRecentRows(const HeadKv& head, int64_t tokens, std::vector<PageRows>* out) {
  std::vector<PageRows> rows;
  for (int32_t p = head.num_pages() - 1; p >= 0 && tokens > 0; --p) {
    const int32_t count = head.page(p).count;
    const int32_t take = static_cast<int32_t>(std::min<int64_t>(count, tokens));
    rows.push_back({p, count - take, count});
    tokens -= take;
  }
  out->insert(out->end(), rows.rbegin(), rows.rend());
}

// StreamingLLM: the sink and the last (budget - sink) tokens, in every layer (StreamingLLM has no dense layers,
// so dense_layers is ignored). Pages wholly older than that are freed.
class StreamingPolicy : public KvPolicy {
 public:
  explicit StreamingPolicy(const PolicyOptions& options) : KvPolicy(options) {}
  absl::Status Select(const SequenceKv& kv, int32_t layer, const ChunkQueries&, LayerSelection* out) override {
    const int32_t heads = kv.geometry().num_kv_heads;
    out->heads.assign(heads, HeadSelection{});
    out->dense = false;
    for (int32_t h = 0; h < heads; ++h) {
      SelectRecentRows(kv.head(layer, h), options_.budget - kv.head(layer, h).sink_count(), &out->heads[h].pages);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<Maintenance> AfterCommit(const SequenceKv& kv) override {
    // Keep whole pages overlapping the window. Every head has the same positional pages.
    const HeadKv& head = kv.head(0, 0);
    const int64_t keep = options_.budget - head.sink_count();
    int64_t newer = 0;
    int32_t drop = head.num_pages();
    while (drop > 0 && newer < keep) newer += head.page(--drop).count;
    Maintenance m;
    m.drop_pages = drop;
    return m;
  }
};

// Shared by the selecting policies: dense handling for dense layers, short contexts and (by default) prefill.
class SelectingPolicy : public KvPolicy {
 public:
  SelectingPolicy(const PolicyOptions& options, int32_t group_size) : KvPolicy(options), group_size_(group_size) {}

  absl::Status Select(const SequenceKv& kv, int32_t layer, const ChunkQueries& q, LayerSelection* out) override {
    if (IsDenseLayer(layer) || (q.rows > 1 && !q.sparse_prefill)) {
      SelectEverything(kv, layer, out);
      return absl::OkStatus();
    }
    const int32_t heads = kv.geometry().num_kv_heads;
    out->heads.assign(heads, HeadSelection{});
    out->dense = false;
    for (int32_t h = 0; h < heads; ++h) {
      const HeadKv& head = kv.head(layer, h);
      HeadSelection& s = out->heads[h];
      if (head.sink_count() + head.clustered_tokens() + head.positional_tokens() <= options_.budget) {
        s = kv.SelectAll(layer, h);  // everything fits in the budget
        continue;
      }
      SelectHead(head, q.Group(h, group_size_), &s);
    }
    return absl::OkStatus();
  }

 protected:
  virtual void SelectHead(const HeadKv& head, const QueryGroup& q, HeadSelection* s) = 0;
  const int32_t group_size_;
};

// The first positional page of the recent window: the partial last page and the `window` tokens of complete
// pages before it are recent; older complete pages are candidates for selection (quest) or clustering (clusterkv).
int32_t FirstRecentPage(const HeadKv& head, const PolicyOptions& o) {
  return std::max(0, head.num_complete_pages() - o.window / o.page_tokens);
}

// Quest: the recent pages always; older complete pages ranked by their key bounds.
class QuestPolicy : public SelectingPolicy {
 public:
  using SelectingPolicy::SelectingPolicy;

 protected:
  void SelectHead(const HeadKv& head, const QueryGroup& q, HeadSelection* s) override {
    const int32_t P = options_.page_tokens;
    const int32_t first_recent = FirstRecentPage(head, options_);
    int64_t recent = 0;
    for (int32_t p = first_recent; p < head.num_pages(); ++p) recent += head.page(p).count;
    const int64_t budget = options_.budget - head.sink_count() - recent;
    std::vector<float> scores(first_recent);
    ScorePageBounds(q, head.page_hi(), head.page_lo(), first_recent, options_.pooling, scores.data());
    std::vector<int32_t> sizes(first_recent, P);
    for (int32_t p : SelectGreedy(scores, sizes, budget, nullptr)) s->pages.push_back({p, 0, P});
    for (int32_t p = first_recent; p < head.num_pages(); ++p) s->pages.push_back({p, 0, head.page(p).count});
  }
};

// ClusterKV: clusters ranked by q·centroid; the unclustered positional tokens (the recent window and tokens not
// yet clustered) always.
class ClusterKvPolicy : public SelectingPolicy {
 public:
  ClusterKvPolicy(const PolicyOptions& options, int32_t group_size, ThreadPool* threads)
      : SelectingPolicy(options, group_size), threads_(threads) {}

  // Once cluster_window tokens older than the recent window have gathered (a freshly prefilled prompt, or
  // generated tokens), they become clusters: ceil(tokens / tokens_per_cluster) of them, at least window_clusters.
  absl::StatusOr<Maintenance> AtSettlePoint(const SequenceKv& kv) override {
    Maintenance m;
    for (int32_t layer = 0; layer < kv.geometry().num_layers; ++layer) {
      if (IsDenseLayer(layer)) continue;
      const HeadKv& head = kv.head(layer, 0);  // every head of a layer has the same positional pages
      const int32_t older_pages = FirstRecentPage(head, options_);
      int64_t older = 0;
      for (int32_t p = 0; p < older_pages; ++p) older += head.page(p).count;
      if (older < options_.cluster_window) continue;
      const int32_t clusters = static_cast<int32_t>(std::max<int64_t>(
          options_.window_clusters, (older + options_.tokens_per_cluster - 1) / options_.tokens_per_cluster));
      LIVEKV_ASSIGN_OR_RETURN(std::vector<HeadClustering> plan,
                              kv.PlanClustering(layer, older_pages, clusters, KMeansOpts(), threads_));
      for (HeadClustering& c : plan) m.clusterings.push_back(std::move(c));
    }
    return m;
  }

 protected:
  void SelectHead(const HeadKv& head, const QueryGroup& q, HeadSelection* s) override {
    int64_t positional = 0;
    for (int32_t p = 0; p < head.num_pages(); ++p) {
      s->pages.push_back({p, 0, head.page(p).count});
      positional += head.page(p).count;
    }
    const int64_t budget = options_.budget - head.sink_count() - positional;
    std::vector<float> scores(head.num_clusters());
    ScoreCentroids(q, head.centroids(), head.num_clusters(), options_.pooling, scores.data());
    s->clusters = SelectGreedy(scores, head.cluster_sizes(), budget, nullptr);
  }

 private:
  KMeansOptions KMeansOpts() const {
    KMeansOptions o;
    o.iterations = options_.kmeans_iterations;
    o.seed = options_.kmeans_seed;
    return o;
  }
  ThreadPool* const threads_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvPolicy>> CreatePolicy(const PolicyOptions& options, int32_t num_layers,
                                                       int32_t group_size, ThreadPool* threads) {
  LIVEKV_RETURN_IF_ERROR(options.Validate(num_layers));
  if (group_size <= 0) return absl::InvalidArgumentError(absl::StrCat("group size must be positive, saw ", group_size));
  switch (options.kind) {
    case PolicyKind::kFull: return std::unique_ptr<KvPolicy>(new FullPolicy(options));
    case PolicyKind::kStreaming: return std::unique_ptr<KvPolicy>(new StreamingPolicy(options));
    case PolicyKind::kQuest: return std::unique_ptr<KvPolicy>(new QuestPolicy(options, group_size));
    case PolicyKind::kClusterKv: return std::unique_ptr<KvPolicy>(new ClusterKvPolicy(options, group_size, threads));
  }
  return absl::InvalidArgumentError("unknown policy kind");
}

}  // namespace livekv
