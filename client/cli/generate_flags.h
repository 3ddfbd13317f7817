// File: client/cli/generate_flags.h
//
// Flags shared by the commands that generate text, and the generation routine they share.
#ifndef LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_
#define LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/generator.h"
#include "engine/model_config.h"
#include "kvcache/policy_options.h"

ABSL_DECLARE_FLAG(int64_t, max_tokens);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(float, temperature);
ABSL_DECLARE_FLAG(float, top_p);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(std::string, policy);
ABSL_DECLARE_FLAG(int32_t, budget);
ABSL_DECLARE_FLAG(int32_t, sink);
ABSL_DECLARE_FLAG(int32_t, window);
ABSL_DECLARE_FLAG(int32_t, cluster_window);
ABSL_DECLARE_FLAG(std::string, kv_dtype);
ABSL_DECLARE_FLAG(int32_t, tokens_per_cluster);
ABSL_DECLARE_FLAG(std::string, pooling);
ABSL_DECLARE_FLAG(bool, sparse_prefill);
ABSL_DECLARE_FLAG(bool, measure_attention_mass);

namespace livekv::cli {

// The KV-cache policy options the flags describe. INVALID_ARGUMENT naming the flag for bad values.
absl::StatusOr<PolicyOptions> PolicyOptionsFromFlags();

// Sampling and length options from the flags; stop tokens from the model's config.
absl::StatusOr<GenerateOptions> GenerateOptionsFromFlags(const ModelConfig& config);

// Loads `model_dir` on the CPU backend, prints the prompt, streams the generated text to `out`, and ends with
// timings and the KV-cache policy's counters.
absl::Status RunGeneration(const std::string& model_dir, const std::string& prompt, std::ostream& out);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_
