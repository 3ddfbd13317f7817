// livekv demo: the README's main job. Loads the embedded model livekv trains itself (models/tiny), reads a
// document with facts hidden in it, asks a question about one of them through the clusterkv policy, and prints
// the streamed answer with per-stage timings and what the policy attended.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "client/cli/generation.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, demo_model, "models/tiny", "Model directory of the demo.");
ABSL_FLAG(std::string, demo_document, "models/tiny/eval/multikey_4096.jsonl",
          "A JSON-lines file of {\"prompt\", \"answer\"}; the demo uses its first line.");

namespace livekv::cli {
namespace {

struct Document {
  std::string text, question, answer;
};

absl::StatusOr<Document> ReadDocument(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("prompt") || !j["prompt"].is_string() || !j.contains("answer") ||
      !j["answer"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the first line must be {\"prompt\": ..., \"answer\": ...}"));
  }
  const std::string prompt = j["prompt"].get<std::string>();
  const size_t q = prompt.rfind("What is");
  if (q == std::string::npos) return absl::InvalidArgumentError(absl::StrCat(path, ": no question in the prompt"));
  return Document{prompt.substr(0, q), prompt.substr(q), j["answer"].get<std::string>()};
}

absl::Status RunDemo(std::ostream& out) {
  CpuBackend backend;
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel model, LoadModel(absl::GetFlag(FLAGS_demo_model), &backend));
  LIVEKV_ASSIGN_OR_RETURN(Document doc, ReadDocument(absl::GetFlag(FLAGS_demo_document)));
  PolicyOptions policy;
  policy.kind = PolicyKind::kClusterKv;
  policy.budget = 512;
  GenerateOptions options;
  options.max_new_tokens = 16;
  options.stop_ids = model.config.eos_token_ids;

  out << absl::StrFormat("livekv demo: model %s (%.1fM parameters, trained by tools/train/train_tiny.py), CPU\n",
                         absl::GetFlag(FLAGS_demo_model), model.config.NumParameters() / 1e6);
  out << absl::StrFormat("document: %d bytes of prose with facts hidden in it, starting \"%s...\"\n",
                         doc.text.size(), doc.text.substr(0, 60));
  out << "question: " << doc.question << "\n";
  out << absl::StrFormat("policy:   clusterkv, budget %d tokens per KV head (sink %d + window %d + clusters)\n",
                         policy.budget, policy.sink, policy.window);
  out << "answer:  " << std::flush;
  LIVEKV_ASSIGN_OR_RETURN(GenerationResult r, GenerateText(model, &backend, doc.text + doc.question, options, policy,
                                                          [&](absl::string_view p) { out << p << std::flush; }));
  const bool correct = r.text.rfind(doc.answer, 0) == 0;
  out << absl::StrFormat("\n          (expected%s: %s)\n", correct ? ", correct" : ", WRONG", doc.answer);
  const double decode_s = r.stats.decode_seconds - r.maintenance_seconds;
  out << absl::StrFormat(
      "timings:  prefill %d tokens %.0f ms (%.0f tokens/s) | clustering the document %.0f ms | decode %d tokens "
      "%.1f ms each (%.0f tokens/s)\n",
      r.stats.prompt_tokens, r.stats.prefill_seconds * 1e3, r.stats.prefill_tokens_per_second(),
      r.maintenance_seconds * 1e3, r.stats.generated_tokens - 1,
      decode_s * 1e3 / std::max<int64_t>(1, r.stats.generated_tokens - 1),
      (r.stats.generated_tokens - 1) / std::max(1e-9, decode_s));
  out << "attended per KV head and decode step (layers 0-1 dense), cluster hit rate vs the previous step:\n"
      << FormatCounters(r.counters, /*with_mass=*/false);
  return absl::OkStatus();
}

}  // namespace

int DemoCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  absl::Status s = RunDemo(std::cout);
  if (!s.ok()) {
    std::cerr << "error: " << s << "\n";
    return 1;
  }
  return 0;
}

}  // namespace livekv::cli
