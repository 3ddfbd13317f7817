// Compares livekv's tokenizer of a model directory with expected ids from a reference implementation
// (tools/tokenizer/hf_reference.py --tokenizers ..., or the gpt2_corpus.jsonl format):
//
//   bazel run //engine/tokenizer:tokenizer_conformance -- --model_dir=/models/llama3 --expected=llama3.jsonl
//
// Each line of --expected is {"text": ..., "ids": [...]} with optional "ids_parse_special" and
// "ids_with_specials" (see hf_reference.py for their meaning; absent means equal to "ids"). All three
// encodings are checked on every line; pass --modes=ids for the gpt2_corpus.jsonl format. Prints the first
// mismatches and "<n> of <m> checks match"; exits 1 on any mismatch or error.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/marshalling.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "engine/tokenizer/tokenizer_loader.h"

ABSL_FLAG(std::string, model_dir, "", "directory with tokenizer.json (and tokenizer_config.json)");
ABSL_FLAG(std::string, expected, "", "JSONL file of expected ids");
ABSL_FLAG(std::vector<std::string>, modes, std::vector<std::string>({"ids", "ids_parse_special", "ids_with_specials"}),
          "encodings to check; use --modes=ids for a file without the other two (e.g. gpt2_corpus.jsonl)");
ABSL_FLAG(int, show, 10, "mismatches to print");

namespace livekv {
namespace {

int Main() {
  for (const std::string& mode : absl::GetFlag(FLAGS_modes)) {
    if (mode != "ids" && mode != "ids_parse_special" && mode != "ids_with_specials") {
      std::fprintf(stderr, "unknown --modes entry \"%s\"\n", mode.c_str());
      return 1;
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(absl::GetFlag(FLAGS_model_dir));
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::string> expected = ReadFileToString(absl::GetFlag(FLAGS_expected));
  if (!expected.ok()) {
    std::fprintf(stderr, "%s\n", expected.status().ToString().c_str());
    return 1;
  }
  int checks = 0, matches = 0, shown = 0, line_no = 0;
  for (const absl::string_view line : absl::StrSplit(*expected, '\n', absl::SkipEmpty())) {
    ++line_no;
    const nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
    if (j.is_discarded() || !j.contains("text") || !j["text"].is_string()) {
      std::fprintf(stderr, "line %d: not a {\"text\": ...} JSON object\n", line_no);
      return 1;
    }
    const std::string text = j["text"].get<std::string>();
    if (!j.contains("ids")) {
      std::fprintf(stderr, "line %d: no \"ids\"\n", line_no);
      return 1;
    }
    for (const std::string& key : absl::GetFlag(FLAGS_modes)) {
      // hf_reference.py omits the last two where they equal "ids".
      const std::vector<int32_t> want = j[j.contains(key) ? key : "ids"].get<std::vector<int32_t>>();
      const absl::string_view k = key;
      absl::StatusOr<std::vector<int32_t>> got =
          k == "ids_with_specials" ? (*tok)->EncodeWithSpecials(text) : (*tok)->Encode(text, k == "ids_parse_special");
      ++checks;
      if (got.ok() && *got == want) {
        ++matches;
        continue;
      }
      if (shown++ < absl::GetFlag(FLAGS_show)) {
        std::printf("line %d %s \"%s\"\n  expected [%s]\n  got      %s\n", line_no, key.c_str(),
                    absl::CHexEscape(text).c_str(), absl::StrJoin(want, ", ").c_str(),
                    got.ok() ? ("[" + absl::StrJoin(*got, ", ") + "]").c_str() : got.status().ToString().c_str());
      }
    }
  }
  std::printf("%d of %d checks match\n", matches, checks);
  return matches == checks && checks > 0 ? 0 : 1;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Main();
}
