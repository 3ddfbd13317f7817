// File: kvcache/policy_options.h
//
// Parameters of the KV-cache policies, with the papers' defaults (../shared/research/seeds.md §1.3, §2.4).
//
// Budget accounting: `budget` is the number of cached tokens each (layer, KV head) attends to at a decode step,
// counting the sink, the recent window and the selected blocks (FreeKV's convention). The current token always
// attends to itself on top of that.
#ifndef LIVEKV_KVCACHE_POLICY_OPTIONS_H_
#define LIVEKV_KVCACHE_POLICY_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace livekv {

enum class PolicyKind {
  kFull,       // every cached token (accuracy and speed baseline)
  kStreaming,  // sink + the most recent tokens; older tokens are dropped (StreamingLLM)
  kQuest,      // sink + recent pages + positional pages ranked by per-channel min/max key bounds (Quest)
  kClusterKv,  // sink + recent window + semantic clusters ranked by centroid (ClusterKV)
};

absl::string_view PolicyKindName(PolicyKind kind);
// "full", "streaming", "quest", "clusterkv"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<PolicyKind> ParsePolicyKind(absl::string_view name);

// How the query heads that share a KV head are pooled into one ranking (FreeKV §2.3).
enum class GroupPooling {
  kMeanScore,    // mean of the raw scores over the group (FreeKV's system kernel)
  kMeanSoftmax,  // mean of per-head softmax over blocks ("MeanS", FreeKV's accuracy setting)
};

struct PolicyOptions {
  PolicyKind kind = PolicyKind::kClusterKv;
  int32_t budget = 1024;      // tokens attended per (layer, KV head), sink and window included
  int32_t sink = 16;          // first tokens, always attended, never clustered
  int32_t window = 128;       // most recent tokens, always attended exactly (quest: whole pages, plus the
                              // partial last page)
  int32_t page_tokens = 32;   // tokens per page
  // clusterkv: tokens older than the window are clustered once `cluster_window` of them have gathered (at a
  // decode step): a prompt into ceil(tokens / tokens_per_cluster) clusters, each later batch of generated tokens
  // into `window_clusters` clusters (ClusterKV: 320 tokens into 8). ClusterKV's prefill uses 400 clusters at 32k
  // (80 tokens each); we default to 32 (one page), which on our trained model covers more attention mass at
  // equal budget (docs/accuracy.md) and gives selection the same granularity as Quest's pages.
  int32_t cluster_window = 320;
  int32_t tokens_per_cluster = 32;
  int32_t window_clusters = 8;
  int32_t kmeans_iterations = 20;
  uint64_t kmeans_seed = 0;
  GroupPooling pooling = GroupPooling::kMeanSoftmax;  // FreeKV's accuracy setting; better on our model too
  std::vector<int32_t> dense_layers = {0, 1};  // layers that always attend to everything
  // Multi-token chunks (prefill) attend to everything by default, as ClusterKV and Quest prefill. With
  // sparse_prefill they attend to the blocks selected by the chunk's queries pooled over its tokens.
  bool sparse_prefill = false;
  DType kv_dtype = DType::kF32;  // storage type of K and V
  // Record the attention mass the selection covers, by also computing dense attention (costly: tests, evals).
  bool measure_attention_mass = false;
  // FreeKV's speculative retrieval (clusterkv): a decode step attends to the clusters selected with the previous
  // step's query, recalled during the previous step; a KV head whose query drifted (mean cosine over its group
  // below correction_threshold) is re-selected with the current query and recalled before its attention.
  // correction_threshold >= 1 corrects every head at every step (then speculation changes nothing but timing).
  bool speculative = false;
  float correction_threshold = 0.8f;  // FreeKV: 0.8 for long inputs, 0.9 for long generations

  // INVALID_ARGUMENT naming the parameter and the value: non-positive sizes, a budget smaller than what the
  // policy always attends (streaming: sink; quest: sink + window + one page; clusterkv: sink + window +
  // cluster_window), window or cluster_window not a multiple of page_tokens, dense layers outside
  // [0, num_layers).
  absl::Status Validate(int64_t num_layers) const;
};

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_POLICY_OPTIONS_H_
