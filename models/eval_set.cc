#include "models/eval_set.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/status_macros.h"

namespace livekv {
namespace {

size_t QuestionStart(const std::string& prompt) {
  const size_t q = prompt.rfind("What is");
  return q == std::string::npos ? prompt.size() : q;
}

}  // namespace

std::string EvalDoc::document() const { return prompt.substr(0, QuestionStart(prompt)); }
std::string EvalDoc::question() const { return prompt.substr(QuestionStart(prompt)); }

absl::StatusOr<std::vector<EvalDoc>> ReadEvalDocs(const std::string& path, int limit) {
  LIVEKV_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, size_t{256} << 20));
  std::vector<EvalDoc> docs;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    ++line_number;
    if (limit >= 0 && static_cast<int>(docs.size()) >= limit) break;
    const nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
        !j.contains("answer") || !j["answer"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_number, ": expected {\"prompt\": string, \"answer\": string}"));
    }
    docs.push_back({j["prompt"].get<std::string>(), j["answer"].get<std::string>()});
  }
  return docs;
}

absl::StatusOr<EvalDoc> ReadEvalDoc(const std::string& path, int index) {
  LIVEKV_ASSIGN_OR_RETURN(std::vector<EvalDoc> docs, ReadEvalDocs(path, index + 1));
  if (static_cast<int>(docs.size()) <= index) {
    return absl::OutOfRangeError(absl::StrCat(path, " has ", docs.size(), " documents; asked for #", index));
  }
  return docs[index];
}

}  // namespace livekv
