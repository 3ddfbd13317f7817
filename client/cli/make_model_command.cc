// livekv make-model: write a model directory with seeded dummy weights in Hugging Face layout.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "engine/model_files.h"
#include "engine/presets.h"

ABSL_FLAG(std::string, out, "", "Directory to write the model to.");
ABSL_FLAG(std::string, preset, "tiny", "Model shape: tiny, small-100m or llama3-8b.");
ABSL_FLAG(std::string, dtype, "f32", "Weight type on disk: f32 or bf16.");
ABSL_FLAG(uint64_t, weights_seed, 1, "Seed of the dummy weights.");

namespace livekv::cli {

int MakeModelCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::cerr << "error: --out is required\n";
    return 2;
  }
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  if (dtype_name != "f32" && dtype_name != "bf16") {
    std::cerr << "error: --dtype must be f32 or bf16, saw \"" << dtype_name << "\"\n";
    return 2;
  }
  absl::StatusOr<ModelConfig> config = PresetConfig(absl::GetFlag(FLAGS_preset));
  if (!config.ok()) {
    std::cerr << "error: " << config.status() << "\n";
    return 2;
  }
  absl::Status s = WriteDummyModel(out, *config, absl::GetFlag(FLAGS_weights_seed),
                                   dtype_name == "bf16" ? DType::kBF16 : DType::kF32);
  if (!s.ok()) {
    std::cerr << "error: " << s << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("wrote %s: %s with %.1fM parameters\n", out, absl::GetFlag(FLAGS_preset),
                               config->NumParameters() / 1e6);
  return 0;
}

}  // namespace livekv::cli
