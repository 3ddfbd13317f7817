// File: engine/tokenizer/regex_splitter.h
//
// Splits text with a regular expression the way Hugging Face's Split pre-tokenizer does with behavior
// "Isolated": every match is a piece, and so is every non-empty run of text between matches. Patterns are the
// Oniguruma-flavoured ones found in tokenizer.json files (GPT-2's, Llama-3's, Qwen2's: `(?i:...)`, `\p{L}`,
// `\p{N}`, `{1,3}`, `(?!\S)`), compiled by PCRE2 in UTF + UCP mode, JIT-compiled when PCRE2 supports it.
//
// One semantic fix-up makes PCRE2 agree with Oniguruma and Python's `regex`: PCRE2's UCP `\s` also matches
// U+180E (MONGOLIAN VOWEL SEPARATOR), which is not White_Space since Unicode 6.3. `\s` (and `\S` outside a
// character class) are therefore rewritten to the exact White_Space set before compiling. `\S` inside a class
// and `\s` inside `\Q...\E` keep PCRE2's meaning. Remaining differences are those of the engines' Unicode
// tables (PCRE2 10.42 has Unicode 14).
#ifndef LIVEKV_ENGINE_TOKENIZER_REGEX_SPLITTER_H_
#define LIVEKV_ENGINE_TOKENIZER_REGEX_SPLITTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace livekv {

// The pre-tokenization pattern of GPT-2 (Hugging Face's ByteLevel pre-tokenizer with use_regex).
inline constexpr absl::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Thread-safety: immutable after Create; Split may be called concurrently.
class RegexSplitter {
 public:
  // Compiles `pattern`; with literal, the pattern is matched as plain text (Split {"String": ...}).
  // INVALID_ARGUMENT with PCRE2's message and offset when the pattern does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(absl::string_view pattern, bool literal = false);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends the pieces of `text` to `pieces`; they are views into `text` and together cover it exactly.
  // Empty matches are ignored. REQUIRES: text is valid UTF-8. RESOURCE_EXHAUSTED when PCRE2 hits its match or
  // memory limits (a pathological pattern and input); nothing is appended then.
  absl::Status Split(absl::string_view text, std::vector<absl::string_view>* pieces) const;

  bool jit_compiled() const { return jit_; }
  const std::string& pattern() const { return pattern_; }

 private:
  RegexSplitter(std::string pattern, void* code, bool jit) : pattern_(std::move(pattern)), code_(code), jit_(jit) {}

  const std::string pattern_;
  void* const code_;  // pcre2_code_8*, kept out of this header
  const bool jit_;
};

// `pattern` with `\s` / `\S` replaced by the Unicode White_Space set (see the file comment). Exposed for tests.
std::string RewriteWhitespaceClasses(absl::string_view pattern);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_REGEX_SPLITTER_H_
