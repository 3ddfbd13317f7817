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
#include "engine/dense_kv_cache.h"
#include "engine/generator.h"
#include "engine/model_files.h"
#include "engine/tokenizer/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer).");
ABSL_FLAG(std::string, prompt, "", "Prompt text.");

namespace livekv::cli {

absl::Status RunGeneration(const std::string& model_dir, const std::string& prompt, std::ostream& out) {
  CpuBackend backend(CpuBackendOptions{.num_threads = absl::GetFlag(FLAGS_threads)});
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel model, LoadModel(model_dir, &backend));
  LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->EncodeWithSpecials(prompt));
  if (ids.empty()) return absl::InvalidArgumentError("--prompt is empty");
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<DenseKvCache> kv,
                          DenseKvCache::Create(model.config, &backend, DType::kF32));

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
