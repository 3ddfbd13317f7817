// File: engine/tokenizer/utf8.h
//
// UTF-8 scanning shared by the tokenizers: validation (Encode rejects invalid text, naming the byte offset) and
// the repair that StreamingDecoder applies to decoded bytes. Well-formedness follows Unicode 15 §3.9, table 3-7:
// no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
#ifndef LIVEKV_ENGINE_TOKENIZER_UTF8_H_
#define LIVEKV_ENGINE_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace livekv {

// What starts at a position of a byte string.
struct Utf8Sequence {
  enum class Kind {
    kValid,      // a complete, well-formed sequence of `length` bytes
    kTruncated,  // the `length` bytes up to the end of the input are a proper prefix of a well-formed sequence
    kInvalid,    // ill-formed; `length` is the maximal subpart (>= 1 byte) that Unicode replaces by one U+FFFD
  };
  Kind kind;
  int length;
};

// Classifies the sequence starting at text[pos]. REQUIRES: pos < text.size().
Utf8Sequence ScanUtf8(absl::string_view text, size_t pos);

// Byte offset of the first byte that does not begin a complete well-formed sequence, or nullopt when all of
// `text` is valid UTF-8.
std::optional<size_t> FindInvalidUtf8(absl::string_view text);

// Appends the UTF-8 encoding of `code_point` to `out`. REQUIRES: code_point <= 0x10FFFF.
void AppendUtf8(uint32_t code_point, std::string* out);

// Decodes the well-formed sequence at text[pos] and advances pos past it. REQUIRES: ScanUtf8(text, pos) is kValid.
uint32_t DecodeUtf8(absl::string_view text, size_t* pos);

// Unicode's White_Space property (what Rust's char::is_whitespace and Oniguruma's \s accept).
bool IsWhiteSpace(uint32_t code_point);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_UTF8_H_
