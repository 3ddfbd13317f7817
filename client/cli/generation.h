// File: client/cli/generation.h
//
// Text generation on the CPU through a KV-cache policy, shared by the CLI's commands.
#ifndef LIVEKV_CLIENT_CLI_GENERATION_H_
#define LIVEKV_CLIENT_CLI_GENERATION_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/model_files.h"
#include "kvcache/policy_kv_context.h"

namespace livekv::cli {

struct GenerationResult {
  GenerateStats stats;
  std::vector<LayerCounters> counters;  // per layer
  double maintenance_seconds = 0;       // clustering and dropping, inside the decode time
  std::string text;                     // the generated text (valid UTF-8)
};

// Encodes `prompt` (with the tokenizer's start-of-sequence template), generates through a fresh KV cache run by
// `policy`, and streams each completed piece of text to `on_text` (stop tokens end the text and are not shown). The model must live on `backend`.
absl::StatusOr<GenerationResult> GenerateText(const LoadedModel& model, CpuBackend* backend, absl::string_view prompt,
                                              const GenerateOptions& options, const PolicyOptions& policy,
                                              const std::function<void(absl::string_view)>& on_text);

// "  layer  2:    501.9 tokens  mass 0.652  hit 0.33" lines for the counters.
std::string FormatCounters(const std::vector<LayerCounters>& counters, bool with_mass);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_GENERATION_H_
