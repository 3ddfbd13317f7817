// Encode throughput of BpeTokenizer on GPT-2's vocabulary, next to the ceilings of the same run: UTF-8
// validation and the regex pre-tokenization alone (both are part of every Encode).
//
//   bazel run -c opt //engine/tokenizer:bpe_tokenizer_benchmark [-- --text_file=PATH] [-- --megabytes=N]
//
// Without --text_file the text is the English prose of the test corpus, cycled to the requested size.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/file.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/regex_splitter.h"
#include "engine/tokenizer/utf8.h"

ABSL_FLAG(std::string, text_file, "", "UTF-8 text to encode (default: English lines of the test corpus)");
ABSL_FLAG(int, megabytes, 1, "size of the text to encode, in MiB");
ABSL_FLAG(std::string, testdata, "engine/tokenizer/testdata", "directory with gpt2/ and gpt2_corpus.jsonl");

namespace livekv {
namespace {

int Main() {
  const std::string testdata = absl::GetFlag(FLAGS_testdata);
  std::string source;
  if (!absl::GetFlag(FLAGS_text_file).empty()) {
    absl::StatusOr<std::string> text = ReadFileToString(absl::GetFlag(FLAGS_text_file));
    if (!text.ok()) {
      std::fprintf(stderr, "%s\n", text.status().ToString().c_str());
      return 1;
    }
    source = *text;
  } else {
    absl::StatusOr<std::string> corpus = ReadFileToString(testdata + "/gpt2_corpus.jsonl");
    if (!corpus.ok()) {
      std::fprintf(stderr, "%s\n", corpus.status().ToString().c_str());
      return 1;
    }
    // The first 28 lines of the corpus are English prose.
    int n = 0;
    for (const absl::string_view line : absl::StrSplit(*corpus, '\n', absl::SkipEmpty())) {
      if (++n > 28) break;
      const nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
      source += j["text"].get<std::string>() + "\n";
    }
  }
  const size_t target = static_cast<size_t>(absl::GetFlag(FLAGS_megabytes)) << 20;
  std::string text;
  while (text.size() < target) text += source;
  if (text.size() > target) {
    text.resize(target);
    while (!text.empty() && FindInvalidUtf8(text).has_value()) text.pop_back();  // cut on a character boundary
  }

  absl::StatusOr<std::string> json = ReadFileToString(testdata + "/gpt2/tokenizer.json");
  if (!json.ok()) {
    std::fprintf(stderr, "%s\n", json.status().ToString().c_str());
    return 1;
  }
  BpeTokenizer::Source src;
  src.tokenizer_json = *json;
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::Create(src);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  const double load_ms = absl::ToDoubleMilliseconds(absl::Now() - start);

  const double mib = text.size() / double(1 << 20);
  auto report = [&](const char* what, absl::Duration d, size_t count, const char* unit) {
    const double s = absl::ToDoubleSeconds(d);
    std::printf("%-34s %8.1f ms  %7.1f MiB/s", what, s * 1e3, mib / s);
    if (count) std::printf("  %9zu %s", count, unit);
    std::printf("\n");
  };
  std::printf("text: %zu bytes; tokenizer.json load: %.1f ms\n", text.size(), load_ms);

  start = absl::Now();
  const bool valid = !FindInvalidUtf8(text).has_value();
  report("ceiling: UTF-8 validation", absl::Now() - start, 0, "");
  if (!valid) {
    std::fprintf(stderr, "text is not valid UTF-8\n");
    return 1;
  }

  absl::StatusOr<std::unique_ptr<RegexSplitter>> splitter = RegexSplitter::Create(kGpt2SplitPattern);
  std::vector<absl::string_view> pieces;
  start = absl::Now();
  if (!splitter.ok() || !(*splitter)->Split(text, &pieces).ok()) return 1;
  report("ceiling: GPT-2 regex split only", absl::Now() - start, pieces.size(), "pieces");

  for (const char* pass : {"Encode, cold word cache", "Encode, warm word cache"}) {
    start = absl::Now();
    absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
    const absl::Duration d = absl::Now() - start;
    if (!ids.ok()) {
      std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
      return 1;
    }
    report(pass, d, ids->size(), "tokens");
  }
  return 0;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Main();
}
