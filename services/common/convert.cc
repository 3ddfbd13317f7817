#include "services/common/convert.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {

v1::DType ToProto(DType t) {
  switch (t) {
    case DType::kF32: return v1::DTYPE_F32;
    case DType::kBF16: return v1::DTYPE_BF16;
    case DType::kF16: return v1::DTYPE_F16;
    default: return v1::DTYPE_UNSPECIFIED;
  }
}

absl::StatusOr<DType> FromProto(v1::DType t, absl::string_view field) {
  switch (t) {
    case v1::DTYPE_F32: return DType::kF32;
    case v1::DTYPE_BF16: return DType::kBF16;
    case v1::DTYPE_F16: return DType::kF16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(field, " must be DTYPE_F32, DTYPE_BF16 or DTYPE_F16, saw ",
                                                     v1::DType_Name(t)));
  }
}

v1::KvGeometry ToProto(const KvGeometry& g) {
  v1::KvGeometry p;
  p.set_num_layers(g.num_layers);
  p.set_num_kv_heads(g.num_kv_heads);
  p.set_head_dim(g.layout.head_dim);
  p.set_page_tokens(g.layout.page_tokens);
  p.set_dtype(ToProto(g.layout.dtype));
  p.set_sink_tokens(g.sink_tokens);
  return p;
}

absl::StatusOr<KvGeometry> FromProto(const v1::KvGeometry& p) {
  KvGeometry g;
  g.num_layers = p.num_layers();
  g.num_kv_heads = p.num_kv_heads();
  g.layout.head_dim = p.head_dim();
  g.layout.page_tokens = p.page_tokens();
  LIVEKV_ASSIGN_OR_RETURN(g.layout.dtype, FromProto(p.dtype(), "geometry.dtype"));
  g.sink_tokens = p.sink_tokens();
  absl::Status s = g.Validate();
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("geometry: ", s.message()));
  if (g.num_layers > 1024 || g.num_kv_heads > 1024 || g.layout.head_dim > 1024 || g.layout.page_tokens > 4096 ||
      g.sink_tokens > 1 << 20) {
    return absl::InvalidArgumentError(absl::StrCat("geometry: implausibly large (layers ", g.num_layers,
                                                   ", kv heads ", g.num_kv_heads, ", head_dim ", g.layout.head_dim,
                                                   ", page_tokens ", g.layout.page_tokens, ")"));
  }
  return g;
}

v1::PolicyConfig ToProto(const PolicyOptions& o) {
  v1::PolicyConfig p;
  switch (o.kind) {
    case PolicyKind::kFull: p.set_kind(v1::POLICY_FULL); break;
    case PolicyKind::kStreaming: p.set_kind(v1::POLICY_STREAMING); break;
    case PolicyKind::kQuest: p.set_kind(v1::POLICY_QUEST); break;
    case PolicyKind::kClusterKv: p.set_kind(v1::POLICY_CLUSTERKV); break;
  }
  p.set_budget(o.budget);
  p.set_window(o.window);
  p.set_cluster_window(o.cluster_window);
  p.set_tokens_per_cluster(o.tokens_per_cluster);
  p.set_window_clusters(o.window_clusters);
  p.set_pooling(o.pooling == GroupPooling::kMeanScore ? v1::POOLING_MEAN_SCORE : v1::POOLING_MEAN_SOFTMAX);
  for (int32_t l : o.dense_layers) p.add_dense_layers(l);
  p.set_dense_layers_set(true);
  p.set_sparse_prefill(o.sparse_prefill);
  p.set_speculative(o.speculative);
  p.set_correction_threshold(o.correction_threshold);
  return p;
}

absl::StatusOr<PolicyOptions> FromProto(const v1::PolicyConfig& p, DType kv_dtype, int32_t sink_tokens,
                                        int32_t page_tokens) {
  PolicyOptions o;
  switch (p.kind()) {
    case v1::POLICY_UNSPECIFIED:
    case v1::POLICY_CLUSTERKV: o.kind = PolicyKind::kClusterKv; break;
    case v1::POLICY_FULL: o.kind = PolicyKind::kFull; break;
    case v1::POLICY_STREAMING: o.kind = PolicyKind::kStreaming; break;
    case v1::POLICY_QUEST: o.kind = PolicyKind::kQuest; break;
    default: return absl::InvalidArgumentError(absl::StrCat("policy.kind: unknown value ", p.kind()));
  }
  auto take = [](int32_t v, int32_t* field) {
    if (v != 0) *field = v;
  };
  take(p.budget(), &o.budget);
  take(p.window(), &o.window);
  take(p.cluster_window(), &o.cluster_window);
  take(p.tokens_per_cluster(), &o.tokens_per_cluster);
  take(p.window_clusters(), &o.window_clusters);
  if (p.pooling() == v1::POOLING_MEAN_SCORE) o.pooling = GroupPooling::kMeanScore;
  if (p.dense_layers_set()) o.dense_layers.assign(p.dense_layers().begin(), p.dense_layers().end());
  o.sparse_prefill = p.sparse_prefill();
  o.speculative = p.speculative();
  if (p.correction_threshold() != 0) o.correction_threshold = p.correction_threshold();
  o.kv_dtype = kv_dtype;
  o.sink = sink_tokens;
  o.page_tokens = page_tokens;
  return o;
}

absl::StatusOr<SamplingParams> FromProto(const v1::SamplingParams& s) {
  SamplingParams p;
  p.temperature = s.temperature();
  p.top_p = s.top_p() == 0 ? 1.0f : s.top_p();
  p.top_k = s.top_k();
  p.seed = s.seed();
  absl::Status v = p.Validate();
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("sampling.", v.message()));
  return p;
}

// ---- KV store ----

v1::ClusterUpdate ToProto(const HeadClustering& c) {
  v1::ClusterUpdate p;
  p.set_layer(c.layer);
  p.set_kv_head(c.kv_head);
  p.set_num_pages(c.num_pages);
  for (const ClusterSpec& spec : c.clusters) {
    v1::ClusterUpdate::Cluster* cluster = p.add_clusters();
    cluster->mutable_positions()->Add(spec.positions.begin(), spec.positions.end());
    cluster->mutable_centroid()->Add(spec.centroid.begin(), spec.centroid.end());
  }
  return p;
}

absl::StatusOr<HeadClustering> FromProto(const v1::ClusterUpdate& p) {
  if (p.num_pages() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("clustering.num_pages must be >= 0, saw ", p.num_pages()));
  }
  HeadClustering c;
  c.layer = p.layer();
  c.kv_head = p.kv_head();
  c.num_pages = p.num_pages();
  c.clusters.resize(p.clusters_size());
  for (int i = 0; i < p.clusters_size(); ++i) {
    c.clusters[i].positions.assign(p.clusters(i).positions().begin(), p.clusters(i).positions().end());
    c.clusters[i].centroid.assign(p.clusters(i).centroid().begin(), p.clusters(i).centroid().end());
  }
  return c;
}

std::vector<v1::BlockSet> ToBlockSets(int32_t layer, int32_t kv_head, const std::vector<BlockRef>& blocks) {
  std::vector<v1::BlockSet> sets;
  int last_rank = 3;  // forces a new set for the first block
  for (const BlockRef& b : blocks) {
    const int rank = b.kind == BlockRef::Kind::kSink ? 0 : b.kind == BlockRef::Kind::kCluster ? 1 : 2;
    if (rank < last_rank || (rank == 0 && sets.back().sink())) {
      sets.emplace_back();
      sets.back().set_layer(layer);
      sets.back().set_kv_head(kv_head);
    }
    last_rank = rank;
    v1::BlockSet& set = sets.back();
    switch (b.kind) {
      case BlockRef::Kind::kSink: set.set_sink(true); break;
      case BlockRef::Kind::kCluster: set.add_clusters(b.index); break;
      case BlockRef::Kind::kPage: set.add_pages(b.first_position); break;
    }
  }
  return sets;
}

std::vector<BlockRef> FromProto(const v1::BlockSet& set) {
  std::vector<BlockRef> blocks;
  blocks.reserve((set.sink() ? 1 : 0) + set.clusters_size() + set.pages_size());
  if (set.sink()) blocks.push_back({BlockRef::Kind::kSink, 0, 0});
  for (int32_t c : set.clusters()) blocks.push_back({BlockRef::Kind::kCluster, c, 0});
  for (int64_t p : set.pages()) blocks.push_back({BlockRef::Kind::kPage, 0, p});
  return blocks;
}

}  // namespace livekv
