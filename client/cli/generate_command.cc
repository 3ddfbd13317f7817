// livekv generate: load a model directory and generate text from a prompt on the CPU.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "common/status_macros.h"
#include "engine/cpu/cpu_backend.h"
#include "common/allocator.h"
#include "engine/generator.h"
#include "engine/model_files.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvcache/page_pool.h"
#include "kvcache/policy_kv_context.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer).");
ABSL_FLAG(std::string, prompt, "", "Prompt text.");

namespace livekv::cli {

absl::Status RunGeneration(const std::string& model_dir, const std::string& prompt, std::ostream& out) {
  CpuBackend backend(CpuBackendOptions{.num_threads = absl::GetFlag(FLAGS_threads)});
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel model, LoadModel(model_dir, &backend));
  LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->EncodeWithSpecials(prompt));
  if (ids.empty()) return absl::InvalidArgumentError("--prompt is empty");
  LIVEKV_ASSIGN_OR_RETURN(PolicyOptions policy, PolicyOptionsFromFlags());
  LIVEKV_RETURN_IF_ERROR(policy.Validate(model.config.num_layers));
  HostAllocator host;
  const int64_t max_tokens = static_cast<int64_t>(ids.size()) + absl::GetFlag(FLAGS_max_tokens) + 1;
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, CreateKvPagePool(model.config, policy, max_tokens, &host));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PolicyKvContext> kv,
                          PolicyKvContext::Create(model.config, policy, pool.get(), backend.pool()));

  GenerateOptions options;
  options.max_new_tokens = absl::GetFlag(FLAGS_max_tokens);
  options.sampling.temperature = absl::GetFlag(FLAGS_temperature);
  options.sampling.top_p = absl::GetFlag(FLAGS_top_p);
  options.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  options.sampling.seed = absl::GetFlag(FLAGS_seed);
  options.stop_ids = model.config.eos_token_ids;

  StreamingDecoder decoder(model.tokenizer.get());
  absl::Status decode_status;
  GenerateStats stats;
  out << prompt << std::flush;
  LIVEKV_RETURN_IF_ERROR(Generate(model.transformer.get(), kv.get(), ids, options,
                                  [&](int32_t token) {
                                    absl::StatusOr<std::string> piece = decoder.Push(token);
                                    if (!piece.ok()) {
                                      decode_status = piece.status();
                                      return false;
                                    }
                                    out << *piece << std::flush;
                                    return true;
                                  },
                                  &stats));
  LIVEKV_RETURN_IF_ERROR(decode_status);
  out << decoder.Flush() << "\n";
  out << absl::StrFormat(
      "\n[%s] prompt %d tokens: prefill %.1f tokens/s (%.1f ms) | generated %d tokens: decode %.1f tokens/s\n",
      backend.name(), stats.prompt_tokens, stats.prefill_tokens_per_second(), stats.prefill_seconds * 1e3,
      stats.generated_tokens, stats.decode_tokens_per_second());
  out << absl::StrFormat("policy %s, budget %d: per layer, cached tokens attended per head and step", 
                         PolicyKindName(policy.kind), policy.budget);
  if (policy.measure_attention_mass) out << ", attention mass covered";
  out << ", cluster hit rate vs the previous step\n";
  const std::vector<LayerCounters>& counters = kv->counters();
  for (size_t l = 0; l < counters.size(); ++l) {
    const LayerCounters& c = counters[l];
    out << absl::StrFormat("  layer %2d: %8.1f tokens", l, c.tokens_per_head_step());
    if (policy.measure_attention_mass) out << absl::StrFormat("  mass %.3f", c.mean_mass());
    if (c.clusters_selected > 0) out << absl::StrFormat("  hit %.2f", c.hit_rate());
    out << "\n";
  }
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
