#include "engine/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace livekv {
namespace {

using Kind = Utf8Sequence::Kind;

TEST(Utf8Test, ScanClassifiesSequences) {
  struct Case {
    std::string text;
    Kind kind;
    int length;
  };
  const Case cases[] = {
      {"a", Kind::kValid, 1},
      {"\xC3\xA9", Kind::kValid, 2},
      {"\xE2\x82\xAC", Kind::kValid, 3},
      {"\xF0\x9F\x98\x80", Kind::kValid, 4},
      {"\xF4\x8F\xBF\xBF", Kind::kValid, 4},  // U+10FFFF
      {"\xC3", Kind::kTruncated, 1},
      {"\xF0\x9F\x98", Kind::kTruncated, 3},
      {"\x80", Kind::kInvalid, 1},
      {"\xC0\xAF", Kind::kInvalid, 1},          // overlong lead byte
      {"\xE0\x80\x80", Kind::kInvalid, 1},      // overlong: E0 needs A0..BF next
      {"\xED\xA0\x80", Kind::kInvalid, 1},      // surrogate: ED needs 80..9F next
      {"\xF4\x90\x80\x80", Kind::kInvalid, 1},  // > U+10FFFF
      {"\xF0\x9F\x41", Kind::kInvalid, 2},      // maximal subpart F0 9F, then 'A'
      {"\xFF", Kind::kInvalid, 1},
  };
  for (const Case& c : cases) {
    const Utf8Sequence s = ScanUtf8(c.text, 0);
    EXPECT_EQ(s.kind, c.kind) << c.text;
    EXPECT_EQ(s.length, c.length) << c.text;
  }
}

TEST(Utf8Test, FindInvalid) {
  EXPECT_EQ(FindInvalidUtf8(""), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("plain ASCII text longer than eight bytes"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("h\xC3\xA9llo \xF0\x9F\x98\x80"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("0123456789abcdef\xFF"), 16u);
  EXPECT_EQ(FindInvalidUtf8("0123456789\xE2\x82"), 10u);
}

TEST(Utf8Test, EncodeDecodeRoundTrip) {
  for (const uint32_t cp : {0x0u, 0x41u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFDu, 0xFFFFu, 0x10000u, 0x10FFFFu}) {
    std::string s;
    AppendUtf8(cp, &s);
    ASSERT_EQ(ScanUtf8(s, 0).kind, Kind::kValid) << cp;
    size_t pos = 0;
    EXPECT_EQ(DecodeUtf8(s, &pos), cp);
    EXPECT_EQ(pos, s.size());
  }
}

TEST(Utf8Test, WhiteSpace) {
  for (const uint32_t cp : {0x9u, 0xAu, 0xDu, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u, 0x3000u}) {
    EXPECT_TRUE(IsWhiteSpace(cp)) << cp;
  }
  for (const uint32_t cp : {0x0u, 0x1Cu, 0x41u, 0x180Eu, 0x200Bu, 0xFEFFu}) EXPECT_FALSE(IsWhiteSpace(cp)) << cp;
}

}  // namespace
}  // namespace livekv
