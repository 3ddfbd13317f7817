#include "engine/tokenizer/tokenizer.h"

#include <utility>

#include "common/status_macros.h"
#include "engine/tokenizer/utf8.h"

namespace livekv {
namespace {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the well-formed part of `bytes` to `out`, ill-formed subparts as U+FFFD. Returns the number of bytes
// consumed: all of them, except a truncated sequence at the end when `hold_truncated_tail` is set.
size_t AppendRepaired(absl::string_view bytes, bool hold_truncated_tail, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Sequence seq = ScanUtf8(bytes, pos);
    switch (seq.kind) {
      case Utf8Sequence::Kind::kValid:
        out->append(bytes.data() + pos, seq.length);
        break;
      case Utf8Sequence::Kind::kTruncated:
        if (hold_truncated_tail) return pos;
        AppendUtf8(kReplacementChar, out);
        break;
      case Utf8Sequence::Kind::kInvalid:
        AppendUtf8(kReplacementChar, out);
        break;
    }
    pos += seq.length;
  }
  return pos;
}

}  // namespace

StreamingDecoder::StreamingDecoder(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}

absl::StatusOr<std::string> StreamingDecoder::Push(int32_t id) {
  const int32_t one[1] = {id};
  LIVEKV_ASSIGN_OR_RETURN(std::string bytes, tokenizer_->DecodeBytes(one));
  pending_ += bytes;
  std::string out;
  const size_t consumed = AppendRepaired(pending_, /*hold_truncated_tail=*/true, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string StreamingDecoder::Flush() {
  std::string out;
  AppendRepaired(pending_, /*hold_truncated_tail=*/false, &out);
  pending_.clear();
  return out;
}

}  // namespace livekv
