// StreamingDecoder, driven through ByteTokenizer so that every byte can be pushed on its own.
#include "engine/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/tokenizer/byte_tokenizer.h"

namespace livekv {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Pushes each byte of `bytes` as one token; returns the pieces.
std::vector<std::string> PushBytes(StreamingDecoder* decoder, const std::string& bytes) {
  std::vector<std::string> pieces;
  for (const char c : bytes) {
    absl::StatusOr<std::string> piece = decoder->Push(static_cast<uint8_t>(c));
    EXPECT_TRUE(piece.ok()) << piece.status();
    pieces.push_back(piece.ok() ? *piece : "");
  }
  return pieces;
}

TEST(StreamingDecoderTest, HoldsBackIncompleteSequences) {
  ByteTokenizer tok;
  StreamingDecoder decoder(&tok);
  // "a😀b": the emoji's four bytes arrive one at a time.
  const std::vector<std::string> pieces = PushBytes(&decoder,
                                                    "a\xF0\x9F\x98\x80"
                                                    "b");
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "", "", "\xF0\x9F\x98\x80", "b"}));
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  EXPECT_EQ(decoder.Flush(), "");
}

TEST(StreamingDecoderTest, PendingBytesAndFlush) {
  ByteTokenizer tok;
  StreamingDecoder decoder(&tok);
  PushBytes(&decoder, "x\xE2\x82");
  EXPECT_EQ(decoder.pending_bytes(), 2u);
  EXPECT_EQ(decoder.Flush(), kReplacement);  // an unfinished sequence at the end is one U+FFFD
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  // Reusable after Flush.
  EXPECT_EQ(PushBytes(&decoder, "ok"), (std::vector<std::string>{"o", "k"}));
}

TEST(StreamingDecoderTest, InvalidBytesBecomeReplacementCharacters) {
  ByteTokenizer tok;
  StreamingDecoder decoder(&tok);
  std::string out;
  // 0xFF: never valid. F0 9F then 'A': the maximal subpart F0 9F is one U+FFFD. ED A0 80 (a surrogate): three.
  for (const std::string& piece : PushBytes(&decoder,
                                            "\xFF"
                                            "\xF0\x9F"
                                            "A"
                                            "\xED\xA0\x80"
                                            "z"))
    out += piece;
  out += decoder.Flush();
  EXPECT_EQ(out, std::string(kReplacement) + kReplacement + "A" + kReplacement + kReplacement + kReplacement + "z");
}

TEST(StreamingDecoderTest, MultiByteTokensAndSpecials) {
  ByteTokenizer tok;
  StreamingDecoder decoder(&tok);
  absl::StatusOr<std::string> piece = decoder.Push(ByteTokenizer::kEosId);
  ASSERT_TRUE(piece.ok());
  EXPECT_EQ(*piece, "<|eos|>");
}

TEST(StreamingDecoderTest, BadIdLeavesStateUnchanged) {
  ByteTokenizer tok;
  StreamingDecoder decoder(&tok);
  PushBytes(&decoder, "\xC3");
  EXPECT_EQ(decoder.Push(9999).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decoder.pending_bytes(), 1u);
  absl::StatusOr<std::string> piece = decoder.Push(0xA9);
  ASSERT_TRUE(piece.ok());
  EXPECT_EQ(*piece, "\xC3\xA9");
}

}  // namespace
}  // namespace livekv
