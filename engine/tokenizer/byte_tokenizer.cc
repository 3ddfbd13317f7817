#include "engine/tokenizer/byte_tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/utf8.h"

namespace livekv {
namespace {

constexpr absl::string_view kSpecialText[] = {"<|bos|>", "<|eos|>", "<|pad|>"};

}  // namespace

absl::StatusOr<std::vector<int32_t>> ByteTokenizer::Encode(absl::string_view text, bool parse_special) const {
  if (const std::optional<size_t> bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrFormat("text is not valid UTF-8 at byte offset %d (byte 0x%02x)", *bad,
                                                      static_cast<uint8_t>(text[*bad])));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (parse_special && text[i] == '<') {
      bool matched = false;
      for (int s = 0; s < 3; ++s) {
        if (absl::string_view(text).substr(i, kSpecialText[s].size()) == kSpecialText[s]) {
          ids.push_back(kBosId + s);
          i += kSpecialText[s].size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    ids.push_back(static_cast<uint8_t>(text[i]));
    ++i;
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ByteTokenizer::EncodeWithSpecials(absl::string_view text,
                                                                       bool parse_special) const {
  absl::StatusOr<std::vector<int32_t>> body = Encode(text, parse_special);
  if (!body.ok()) return body.status();
  std::vector<int32_t> ids;
  ids.reserve(body->size() + 1);
  ids.push_back(kBosId);
  ids.insert(ids.end(), body->begin(), body->end());
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::DecodeBytes(absl::Span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id >= 0 && id < 256) {
      out.push_back(static_cast<char>(id));
    } else if (id >= kBosId && id < kVocabSize) {
      out.append(kSpecialText[id - kBosId].data(), kSpecialText[id - kBosId].size());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " at position ", i, " is outside the byte vocabulary [0, ", kVocabSize, ")"));
    }
  }
  return out;
}

absl::StatusOr<int32_t> ByteTokenizer::TokenId(absl::string_view token) const {
  for (int s = 0; s < 3; ++s) {
    if (token == kSpecialText[s]) return kBosId + s;
  }
  return absl::NotFoundError(absl::StrCat("no special token \"", absl::CHexEscape(token), "\" in the byte tokenizer"));
}

}  // namespace livekv
