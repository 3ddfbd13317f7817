#include "kvcache/policy_options.h"

#include "absl/strings/str_cat.h"

namespace livekv {

absl::string_view PolicyKindName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull: return "full";
    case PolicyKind::kStreaming: return "streaming";
    case PolicyKind::kQuest: return "quest";
    case PolicyKind::kClusterKv: return "clusterkv";
  }
  return "?";
}

absl::StatusOr<PolicyKind> ParsePolicyKind(absl::string_view name) {
  for (PolicyKind k : {PolicyKind::kFull, PolicyKind::kStreaming, PolicyKind::kQuest, PolicyKind::kClusterKv}) {
    if (name == PolicyKindName(k)) return k;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy \"", name, "\" (known: full, streaming, quest, clusterkv)"));
}

absl::Status PolicyOptions::Validate(int64_t num_layers) const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, saw ", v));
  };
  if (sink < 0) return absl::InvalidArgumentError(absl::StrCat("sink must be >= 0, saw ", sink));
  if (window < 0) return absl::InvalidArgumentError(absl::StrCat("window must be >= 0, saw ", window));
  for (auto [name, v] : {std::pair<const char*, int64_t>{"budget", budget},
                         {"page_tokens", page_tokens},
                         {"cluster_window", cluster_window},
                         {"tokens_per_cluster", tokens_per_cluster},
                         {"window_clusters", window_clusters}}) {
    if (auto s = positive(name, v); !s.ok()) return s;
  }
  if (kmeans_iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans_iterations must be >= 0, saw ", kmeans_iterations));
  }
  auto at_least = [&](const char* what, int64_t floor) -> absl::Status {
    if (budget >= floor) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("budget (", budget, ") must be at least ", what, " (", floor,
                                                   ") for policy ", PolicyKindName(kind)));
  };
  switch (kind) {
    case PolicyKind::kFull: break;
    case PolicyKind::kStreaming:
      if (auto s = at_least("sink", sink); !s.ok()) return s;
      break;
    case PolicyKind::kQuest:
      if (auto s = at_least("sink + window + page_tokens", int64_t{sink} + window + page_tokens); !s.ok()) return s;
      break;
    case PolicyKind::kClusterKv:
      if (auto s = at_least("sink + window + cluster_window", int64_t{sink} + window + cluster_window); !s.ok()) {
        return s;
      }
      break;
  }
  for (auto [name, v] : {std::pair<const char*, int32_t>{"window", window}, {"cluster_window", cluster_window}}) {
    if (v % page_tokens != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " (", v, ") must be a multiple of page_tokens (", page_tokens, ")"));
    }
  }
  if (window_clusters > cluster_window) {
    return absl::InvalidArgumentError(absl::StrCat("window_clusters (", window_clusters,
                                                   ") cannot exceed cluster_window (", cluster_window, ")"));
  }
  for (int32_t l : dense_layers) {
    if (l < 0 || l >= num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("dense layer ", l, " is outside the model's layers [0, ", num_layers, ")"));
    }
  }
  if (!(correction_threshold >= -1.0f && correction_threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("correction_threshold must be in [-1, 1], saw ", correction_threshold));
  }
  if (speculative && kind != PolicyKind::kClusterKv) {
    return absl::InvalidArgumentError(absl::StrCat("speculative recall applies to clusterkv, not ",
                                                   PolicyKindName(kind)));
  }
  if (kv_dtype != DType::kF32 && kv_dtype != DType::kBF16 && kv_dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("kv_dtype must be F32, BF16 or F16, saw ", DTypeName(kv_dtype)));
  }
  return absl::OkStatus();
}

}  // namespace livekv
