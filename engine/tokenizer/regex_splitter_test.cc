#include "engine/tokenizer/regex_splitter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"

namespace livekv {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Meta's Llama-3 and Alibaba's Qwen2 tokenizer.json Split patterns.
constexpr absl::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> Split(absl::string_view pattern, absl::string_view text) {
  absl::StatusOr<std::unique_ptr<RegexSplitter>> s = RegexSplitter::Create(pattern);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return {};
  std::vector<absl::string_view> pieces;
  const absl::Status status = (*s)->Split(text, &pieces);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(absl::StrJoin(pieces, ""), text) << "pieces must cover the text";
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

TEST(RegexSplitterTest, CompilesWithJit) {
  absl::StatusOr<std::unique_ptr<RegexSplitter>> s = RegexSplitter::Create(kLlama3);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)->jit_compiled());  // Debian's PCRE2 has JIT on x86-64
}

TEST(RegexSplitterTest, Gpt2Pattern) {
  EXPECT_THAT(Split(kGpt2SplitPattern, "Hello world's 42!"), ElementsAre("Hello", " world", "'s", " 42", "!"));
  EXPECT_THAT(Split(kGpt2SplitPattern, "12345678"), ElementsAre("12345678"));
  EXPECT_THAT(Split(kGpt2SplitPattern, "IT'S"), ElementsAre("IT", "'", "S"));  // case-sensitive contractions
  EXPECT_THAT(Split(kGpt2SplitPattern, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Split(kGpt2SplitPattern, "end  \n"), ElementsAre("end", "  \n"));
  // \s+(?!\S) backs off one character before a non-space, leaving the last newline to \s+.
  EXPECT_THAT(Split(kGpt2SplitPattern, "x\r\n\r\ny"), ElementsAre("x", "\r\n\r", "\n", "y"));
  EXPECT_THAT(Split(kGpt2SplitPattern, "  "), ElementsAre("  "));
  EXPECT_THAT(Split(kGpt2SplitPattern, "\xC3\xA9t\xC3\xA9 2\xC2\xB2"),  // "été 2²": ² is \p{N}
              ElementsAre("\xC3\xA9t\xC3\xA9", " 2\xC2\xB2"));
}

// Hand-checked against the pattern's alternatives, in order.
TEST(RegexSplitterTest, Llama3Pattern) {
  // Numbers: groups of at most three digits, from the left.
  EXPECT_THAT(Split(kLlama3, "12345678"), ElementsAre("123", "456", "78"));
  EXPECT_THAT(Split(kLlama3, "x=1234.5"), ElementsAre("x", "=", "123", "4", ".", "5"));
  EXPECT_THAT(Split(kLlama3, "$100"), ElementsAre("$", "100"));
  EXPECT_THAT(Split(kLlama3, " 2024"), ElementsAre(" ", "202", "4"));
  // Contractions, case-insensitive.
  EXPECT_THAT(Split(kLlama3, "IT'S"), ElementsAre("IT", "'S"));
  EXPECT_THAT(Split(kLlama3, "it'S"), ElementsAre("it", "'S"));
  EXPECT_THAT(Split(kLlama3, "WE'LL"), ElementsAre("WE", "'LL"));
  EXPECT_THAT(Split(kLlama3, "I'M HERE"), ElementsAre("I", "'M", " HERE"));
  EXPECT_THAT(Split(kLlama3, "don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Split(kLlama3, "You'Re"), ElementsAre("You", "'Re"));
  // A letter run takes one leading character that is not a letter, digit, CR or LF.
  EXPECT_THAT(Split(kLlama3, "Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Split(kLlama3, "(hello)"), ElementsAre("(hello", ")"));
  EXPECT_THAT(Split(kLlama3, "_init"), ElementsAre("_init"));
  // Newlines: punctuation keeps the newlines after it; whitespace runs ending in newlines are one piece.
  EXPECT_THAT(Split(kLlama3, "hello\n\nworld"), ElementsAre("hello", "\n\n", "world"));
  EXPECT_THAT(Split(kLlama3, "end.\n\nNext"), ElementsAre("end", ".\n\n", "Next"));
  EXPECT_THAT(Split(kLlama3, "ab\r\ncd"), ElementsAre("ab", "\r\n", "cd"));
  EXPECT_THAT(Split(kLlama3, "a  \n  b"), ElementsAre("a", "  \n", " ", " b"));
  EXPECT_THAT(Split(kLlama3, "x \t\n"), ElementsAre("x", " \t\n"));
  EXPECT_THAT(Split(kLlama3, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Split(kLlama3, " ..."), ElementsAre(" ..."));
  EXPECT_THAT(Split(kLlama3, "\n\nHello"), ElementsAre("\n\n", "Hello"));
}

TEST(RegexSplitterTest, Qwen2PatternSplitsSingleDigits) {
  EXPECT_THAT(Split(kQwen2, "x2024"), ElementsAre("x", "2", "0", "2", "4"));
}

TEST(RegexSplitterTest, WhiteSpaceFollowsUnicodeNotPcre2) {
  // U+180E MONGOLIAN VOWEL SEPARATOR is in PCRE2's UCP \s but is not White_Space; U+0085 NEXT LINE is.
  EXPECT_THAT(Split(kGpt2SplitPattern, "a\xE1\xA0\x8E\n"), ElementsAre("a", "\xE1\xA0\x8E", "\n"));
  EXPECT_THAT(Split(kGpt2SplitPattern, "a\xC2\x85\n"), ElementsAre("a", "\xC2\x85\n"));
  // U+FEFF is neither.
  EXPECT_THAT(Split(kGpt2SplitPattern, "a\xEF\xBB\xBF\n"), ElementsAre("a", "\xEF\xBB\xBF", "\n"));
  // U+3000 IDEOGRAPHIC SPACE is.
  EXPECT_THAT(Split(kGpt2SplitPattern, "a\xE3\x80\x80\n"), ElementsAre("a", "\xE3\x80\x80\n"));
}

TEST(RegexSplitterTest, RewriteWhitespaceClasses) {
  const std::string ws =
      R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
  EXPECT_EQ(RewriteWhitespaceClasses(R"(\s+)"), "[" + ws + "]+");
  EXPECT_EQ(RewriteWhitespaceClasses(R"((?!\S))"), "(?![^" + ws + "])");
  EXPECT_EQ(RewriteWhitespaceClasses(R"([^\s\p{L}])"), "[^" + ws + R"(\p{L}])");
  EXPECT_EQ(RewriteWhitespaceClasses(R"(\\s)"), R"(\\s)");  // an escaped backslash, then 's'
  EXPECT_EQ(RewriteWhitespaceClasses(R"(\Q\s\E\s)"), R"(\Q\s\E[)" + ws + "]");
  EXPECT_EQ(RewriteWhitespaceClasses(R"([]\s])"), "[]" + ws + "]");  // leading ']' is literal
  EXPECT_EQ(RewriteWhitespaceClasses(R"([[:alpha:]\s]x)"), "[[:alpha:]" + ws + "]x");
}

TEST(RegexSplitterTest, LiteralAndEmptyMatches) {
  absl::StatusOr<std::unique_ptr<RegexSplitter>> s = RegexSplitter::Create("a.b", /*literal=*/true);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<absl::string_view> pieces;
  ASSERT_TRUE((*s)->Split("xa.bya-b", &pieces).ok());
  EXPECT_THAT(pieces, ElementsAre("x", "a.b", "ya-b"));
  // A pattern that can match the empty string: empty matches are ignored.
  EXPECT_THAT(Split("x*", "abxxc\xC3\xA9"), ElementsAre("ab", "xx", "c\xC3\xA9"));
  EXPECT_THAT(Split("\\d+", ""), ElementsAre());
}

TEST(RegexSplitterTest, BadPattern) {
  absl::StatusOr<std::unique_ptr<RegexSplitter>> s = RegexSplitter::Create("(unclosed");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("(unclosed"));
}

TEST(RegexSplitterTest, LongWhitespaceRun) {
  // \s+(?!\S) backtracks over the run; must not exhaust the JIT stack.
  const std::string text = std::string(1 << 20, ' ') + "x";
  const std::vector<std::string> pieces = Split(kLlama3, text);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].size(), (1u << 20) - 1);
  EXPECT_EQ(pieces[1], " x");
}

}  // namespace
}  // namespace livekv
