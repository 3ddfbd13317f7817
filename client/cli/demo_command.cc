// livekv demo: the README's main job. Makes the embedded tiny model (once) and generates from a prompt on the CPU.
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "common/file.h"
#include "engine/model_files.h"
#include "engine/presets.h"

ABSL_FLAG(std::string, demo_dir, "",
          "Where the demo keeps its tiny model; default $XDG_CACHE_HOME/livekv/tiny or ~/.cache/livekv/tiny.");
ABSL_FLAG(std::string, demo_prompt, "The quick brown fox", "Prompt of the demo.");

namespace livekv::cli {
namespace {

std::string DefaultDemoDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    return JoinPath(xdg, "livekv/tiny");
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return JoinPath(home, ".cache/livekv/tiny");
  }
  return "/tmp/livekv/tiny";
}

}  // namespace

int DemoCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  std::string dir = absl::GetFlag(FLAGS_demo_dir);
  if (dir.empty()) dir = DefaultDemoDir();
  if (!FileExists(JoinPath(dir, "config.json"))) {
    std::cout << "making the embedded tiny model in " << dir << "\n";
    absl::Status s = WriteDummyModel(dir, PresetConfig("tiny").value(), /*seed=*/1, DType::kF32);
    if (!s.ok()) {
      std::cerr << "error: " << s << "\n";
      return 1;
    }
  }
  std::cout << "model " << dir << " (random weights: the text is noise; the pipeline is real)\n\n";
  absl::Status s = RunGeneration(dir, absl::GetFlag(FLAGS_demo_prompt), std::cout);
  if (!s.ok()) {
    std::cerr << "error: " << s << "\n";
    return 1;
  }
  return 0;
}

}  // namespace livekv::cli
