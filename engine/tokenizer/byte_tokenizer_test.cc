#include "engine/tokenizer/byte_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace livekv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ByteTokenizerTest, RoundTrip) {
  ByteTokenizer tok;
  for (const std::string& text : {std::string(""), std::string("hello"), std::string("h\xC3\xA9llo \xF0\x9F\x98\x80"),
                                  std::string("nul\0byte", 8), std::string("<|bos|> as text")}) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_EQ(ids->size(), text.size());
    for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ((*ids)[i], static_cast<uint8_t>(text[i]));
    absl::StatusOr<std::string> back = tok.DecodeBytes(*ids);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, text);
  }
}

TEST(ByteTokenizerTest, Vocabulary) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_TRUE(tok.adds_bos());
  EXPECT_EQ(*tok.TokenId("<|bos|>"), 256);
  EXPECT_EQ(*tok.TokenId("<|eos|>"), 257);
  EXPECT_EQ(*tok.TokenId("<|pad|>"), 258);
  EXPECT_EQ(tok.TokenId("a").status().code(), absl::StatusCode::kNotFound);
}

TEST(ByteTokenizerTest, SpecialTokensOnlyWhenParsed) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.Encode("<|eos|>")->size(), 7u);
  EXPECT_THAT(*tok.Encode("a<|eos|>b<|pad|><|bos", /*parse_special=*/true),
              ElementsAre('a', 257, 'b', 258, '<', '|', 'b', 'o', 's'));
  EXPECT_THAT(*tok.EncodeWithSpecials("hi"), ElementsAre(256, 'h', 'i'));
  EXPECT_EQ(*tok.DecodeBytes({256, 'h', 257, 258}), "<|bos|>h<|eos|><|pad|>");
}

TEST(ByteTokenizerTest, Errors) {
  ByteTokenizer tok;
  const absl::Status bad_text = tok.Encode("ab\xC3(").status();
  EXPECT_EQ(bad_text.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_text.message(), HasSubstr("byte offset 2"));
  const absl::Status bad_id = tok.DecodeBytes({1, 259}).status();
  EXPECT_EQ(bad_id.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_id.message(), HasSubstr("259"));
  EXPECT_EQ(tok.DecodeBytes({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
