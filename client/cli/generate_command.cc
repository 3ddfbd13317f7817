// livekv generate: load a model directory and generate text from a prompt on the CPU.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "client/cli/generation.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer).");
ABSL_FLAG(std::string, prompt, "", "Prompt text.");

namespace livekv::cli {

absl::Status RunGeneration(const std::string& model_dir, const std::string& prompt, std::ostream& out) {
  CpuBackend backend(CpuBackendOptions{.num_threads = absl::GetFlag(FLAGS_threads)});
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel model, LoadModel(model_dir, &backend));
  LIVEKV_ASSIGN_OR_RETURN(PolicyOptions policy, PolicyOptionsFromFlags());
  LIVEKV_ASSIGN_OR_RETURN(GenerateOptions options, GenerateOptionsFromFlags(model.config));
  out << prompt << std::flush;
  LIVEKV_ASSIGN_OR_RETURN(GenerationResult r,
                          GenerateText(model, &backend, prompt, options, policy,
                                       [&](absl::string_view piece) { out << piece << std::flush; }));
  out << "\n\n"
      << absl::StrFormat("[%s] prompt %d tokens: prefill %.1f tokens/s (%.1f ms) | generated %d tokens: decode %.1f "
                         "tokens/s\n",
                         backend.name(), r.stats.prompt_tokens, r.stats.prefill_tokens_per_second(),
                         r.stats.prefill_seconds * 1e3, r.stats.generated_tokens, r.stats.decode_tokens_per_second());
  out << absl::StrFormat("policy %s, budget %d: per layer, cached tokens attended per head and step",
                         PolicyKindName(policy.kind), policy.budget)
      << (policy.measure_attention_mass ? ", attention mass covered" : "")
      << ", cluster hit rate vs the previous step\n"
      << FormatCounters(r.counters, policy.measure_attention_mass);
  return absl::OkStatus();
}

int GenerateCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  const std::string model = absl::GetFlag(FLAGS_model), prompt = absl::GetFlag(FLAGS_prompt);
  if (model.empty()) {
    std::cerr << "error: --model is required\n";
    return 2;
  }
  absl::Status s = RunGeneration(model, prompt, std::cout);
  if (!s.ok()) {
    std::cerr << "error: " << s << "\n";
    return 1;
  }
  return 0;
}

}  // namespace livekv::cli
