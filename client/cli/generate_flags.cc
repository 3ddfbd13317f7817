#include "client/cli/generate_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(int64_t, max_tokens, 32, "Most tokens to generate.");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed.");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy.");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling: keep the most likely tokens up to this probability mass.");
ABSL_FLAG(int32_t, top_k, 0, "Keep only the k most likely tokens; 0 keeps all.");
ABSL_FLAG(int32_t, threads, 0, "CPU threads; 0 uses every hardware thread.");
ABSL_FLAG(std::string, policy, "full", "KV-cache policy: full, streaming, quest or clusterkv.");
ABSL_FLAG(int32_t, budget, 1024, "Cached tokens each (layer, KV head) attends to, sink and window included.");
ABSL_FLAG(int32_t, sink, 16, "First tokens always attended.");
ABSL_FLAG(int32_t, window, 128, "Recent tokens always attended (a multiple of 32).");
ABSL_FLAG(int32_t, cluster_window, 320, "clusterkv: tokens older than the window are clustered in batches of this many.");
ABSL_FLAG(int32_t, tokens_per_cluster, 32, "clusterkv: a prompt of n tokens becomes ceil(n / this) clusters.");
ABSL_FLAG(std::string, pooling, "mean_softmax", "How a KV head's query group is pooled: mean_score or mean_softmax.");
ABSL_FLAG(std::string, kv_dtype, "f32", "KV storage type: f32 or bf16.");
ABSL_FLAG(bool, sparse_prefill, false, "Prompt chunks attend to the selection of their pooled queries, not densely.");
ABSL_FLAG(bool, measure_attention_mass, false, "Also compute dense attention to report the mass the selection covers.");

namespace livekv::cli {

absl::StatusOr<GenerateOptions> GenerateOptionsFromFlags(const ModelConfig& config) {
  GenerateOptions options;
  options.max_new_tokens = absl::GetFlag(FLAGS_max_tokens);
  options.sampling.temperature = absl::GetFlag(FLAGS_temperature);
  options.sampling.top_p = absl::GetFlag(FLAGS_top_p);
  options.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  options.sampling.seed = absl::GetFlag(FLAGS_seed);
  options.stop_ids = config.eos_token_ids;
  absl::Status valid = options.sampling.Validate();
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("sampling flags: ", valid.message()));
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max_tokens must be >= 0, saw ", options.max_new_tokens));
  }
  return options;
}

absl::StatusOr<PolicyOptions> PolicyOptionsFromFlags() {
  PolicyOptions o;
  absl::StatusOr<PolicyKind> kind = ParsePolicyKind(absl::GetFlag(FLAGS_policy));
  if (!kind.ok()) return absl::InvalidArgumentError(absl::StrCat("--policy: ", kind.status().message()));
  o.kind = *kind;
  o.budget = absl::GetFlag(FLAGS_budget);
  o.sink = absl::GetFlag(FLAGS_sink);
  o.window = absl::GetFlag(FLAGS_window);
  o.cluster_window = absl::GetFlag(FLAGS_cluster_window);
  o.tokens_per_cluster = absl::GetFlag(FLAGS_tokens_per_cluster);
  const std::string pooling = absl::GetFlag(FLAGS_pooling);
  if (pooling == "mean_score") {
    o.pooling = GroupPooling::kMeanScore;
  } else if (pooling == "mean_softmax") {
    o.pooling = GroupPooling::kMeanSoftmax;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--pooling must be mean_score or mean_softmax, saw \"", pooling, "\""));
  }
  const std::string dtype = absl::GetFlag(FLAGS_kv_dtype);
  if (dtype == "f32") {
    o.kv_dtype = DType::kF32;
  } else if (dtype == "bf16") {
    o.kv_dtype = DType::kBF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--kv_dtype must be f32 or bf16, saw \"", dtype, "\""));
  }
  o.sparse_prefill = absl::GetFlag(FLAGS_sparse_prefill);
  o.measure_attention_mass = absl::GetFlag(FLAGS_measure_attention_mass);
  return o;
}

}  // namespace livekv::cli
