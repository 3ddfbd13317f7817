// File: engine/tokenizer/json_util.h
//
// Exception-free helpers over nlohmann::json for reading tokenizer files. Every error is INVALID_ARGUMENT and
// names the file and the field (a dotted path such as "model.merges[12]").
#ifndef LIVEKV_ENGINE_TOKENIZER_JSON_UTIL_H_
#define LIVEKV_ENGINE_TOKENIZER_JSON_UTIL_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace livekv {

// Parses `text` without exceptions. INVALID_ARGUMENT naming `file` and the parser's message (with the byte
// position) when it is not valid JSON.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view file);

// Reads fields of one file's JSON, producing errors of the form "<file>: field <path>: <what>".
class JsonFields {
 public:
  explicit JsonFields(std::string file) : file_(std::move(file)) {}

  const std::string& file() const { return file_; }

  // INVALID_ARGUMENT "<file>: field <path>: <what>".
  absl::Status Error(absl::string_view path, absl::string_view what) const;

  // The member `key` of `obj` (an object, at `path`), or nullptr when absent or null.
  static const nlohmann::json* Find(const nlohmann::json& obj, absl::string_view key);

  // Typed getters of a member. `Required*` fail when it is absent; `Optional*` return `fallback` when it is
  // absent or null. All fail when it has another type.
  absl::StatusOr<const nlohmann::json*> Required(const nlohmann::json& obj, absl::string_view path,
                                                 absl::string_view key) const;
  absl::StatusOr<std::string> RequiredString(const nlohmann::json& obj, absl::string_view path,
                                             absl::string_view key) const;
  absl::StatusOr<std::string> OptionalString(const nlohmann::json& obj, absl::string_view path, absl::string_view key,
                                             absl::string_view fallback) const;
  absl::StatusOr<bool> OptionalBool(const nlohmann::json& obj, absl::string_view path, absl::string_view key,
                                    bool fallback) const;
  // A token id: an integer in [0, 2^31 - 2].
  absl::StatusOr<int32_t> TokenIdValue(const nlohmann::json& value, absl::string_view path) const;

 private:
  std::string file_;
};

// "model" + "vocab" -> "model.vocab"; "" + "model" -> "model".
std::string JsonPath(absl::string_view parent, absl::string_view key);
// "model.merges" + 3 -> "model.merges[3]".
std::string JsonPath(absl::string_view parent, size_t index);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_JSON_UTIL_H_
