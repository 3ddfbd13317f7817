// File: engine/tokenizer/byte_tokenizer.h
//
// The plain byte tokenizer of small livekv-trained models, selected by a `livekv_tokenizer.json` of
// {"type": "byte"} in the model directory. Vocabulary (259 ids):
//   0..255  the byte of that value (text is encoded as its UTF-8 bytes, one token each)
//   256     "<|bos|>"
//   257     "<|eos|>"
//   258     "<|pad|>"
// EncodeWithSpecials prepends <|bos|>. DecodeBytes writes special tokens as their text.
#ifndef LIVEKV_ENGINE_TOKENIZER_BYTE_TOKENIZER_H_
#define LIVEKV_ENGINE_TOKENIZER_BYTE_TOKENIZER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"

namespace livekv {

// Thread-safety: stateless; safe for concurrent use.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBosId = 256;
  static constexpr int32_t kEosId = 257;
  static constexpr int32_t kPadId = 258;
  static constexpr int32_t kVocabSize = 259;

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text, bool parse_special = false) const override;
  absl::StatusOr<std::vector<int32_t>> EncodeWithSpecials(absl::string_view text,
                                                          bool parse_special = false) const override;
  bool adds_bos() const override { return true; }
  absl::StatusOr<std::string> DecodeBytes(absl::Span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return kVocabSize; }
  std::optional<int32_t> bos_id() const override { return kBosId; }
  std::optional<int32_t> eos_id() const override { return kEosId; }
  // "<|bos|>", "<|eos|>" and "<|pad|>" only.
  absl::StatusOr<int32_t> TokenId(absl::string_view token) const override;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_BYTE_TOKENIZER_H_
