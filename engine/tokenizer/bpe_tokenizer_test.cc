#include "engine/tokenizer/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "engine/tokenizer/utf8.h"

namespace livekv {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Tests run in the workspace root of the runfiles tree.
constexpr char kTestdata[] = "engine/tokenizer/testdata";

std::string ReadTestFile(const std::string& relative) {
  absl::StatusOr<std::string> text = ReadFileToString(absl::StrCat(kTestdata, "/", relative));
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : std::string();
}

std::unique_ptr<BpeTokenizer> MustCreate(const std::string& tokenizer_json, const std::string& config_json = "") {
  BpeTokenizer::Source source;
  source.tokenizer_json = tokenizer_json;
  source.tokenizer_config_json = config_json;
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> t = BpeTokenizer::Create(source);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

absl::Status CreateStatus(const std::string& tokenizer_json, const std::string& config_json = "") {
  BpeTokenizer::Source source;
  source.tokenizer_json = tokenizer_json;
  source.tokenizer_json_name = "bad/tokenizer.json";
  source.tokenizer_config_json = config_json;
  source.tokenizer_config_json_name = "bad/tokenizer_config.json";
  return BpeTokenizer::Create(source).status();
}

std::vector<int32_t> MustEncode(const Tokenizer& t, absl::string_view text, bool parse_special = false) {
  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(text, parse_special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>();
}

std::string MustDecode(const Tokenizer& t, absl::Span<const int32_t> ids) {
  absl::StatusOr<std::string> text = t.DecodeBytes(ids);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : std::string();
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

struct CorpusCase {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<CorpusCase> ReadCorpus(const std::string& relative, const char* ids_key = "ids") {
  std::vector<CorpusCase> cases;
  const std::string text = ReadTestFile(relative);
  for (const absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const Json j = Json::parse(line.begin(), line.end(), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << relative << ": " << line;
    if (j.is_discarded()) continue;
    // hf_reference.py omits "ids_parse_special" / "ids_with_specials" where they equal "ids".
    const char* key = j.contains(ids_key) ? ids_key : "ids";
    cases.push_back({j["text"].get<std::string>(), j[key].get<std::vector<int32_t>>()});
  }
  return cases;
}

// tokenizer.json of the variant `name` of testdata/variants.json (top-level fields replaced, "model" merged).
std::string VariantJson(const std::string& name) {
  Json base = Json::parse(ReadTestFile("gpt2/tokenizer.json"));
  const Json variants = Json::parse(ReadTestFile("variants.json"));
  for (const auto& [key, value] : variants.at(name).items()) {
    if (key == "model") {
      for (const auto& [mkey, mvalue] : value.items()) base["model"][mkey] = mvalue;
    } else {
      base[key] = value;
    }
  }
  return base.dump();
}

// A tokenizer over the 256 byte symbols plus `extra` tokens (ids 256...), with `merges` as "a b" strings or, when
// as_pairs, [a, b] arrays. Spellings are byte-level ("Ġ" is a space).
Json TinyTokenizer(const std::vector<std::string>& extra,
                   const std::vector<std::pair<std::string, std::string>>& merges, bool as_pairs = false) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    AppendUtf8(ByteLevelCodePoints()[b], &s);
    vocab[s] = b;
  }
  for (size_t i = 0; i < extra.size(); ++i) vocab[extra[i]] = 256 + static_cast<int>(i);
  Json merge_list = Json::array();
  for (const auto& [a, b] : merges) {
    if (as_pairs) {
      merge_list.push_back(Json::array({a, b}));
    } else {
      merge_list.push_back(a + " " + b);
    }
  }
  return Json{
      {"version", "1.0"},
      {"added_tokens", Json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
  };
}

class Gpt2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokenizer_ = MustCreate(ReadTestFile("gpt2/tokenizer.json"), ReadTestFile("gpt2/tokenizer_config.json")).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  static const BpeTokenizer& tok() { return *tokenizer_; }

 private:
  static BpeTokenizer* tokenizer_;
};
BpeTokenizer* Gpt2Test::tokenizer_ = nullptr;

// The corpus ids come from gpt-3-encoder (tools/tokenizer/make_gpt2_testdata.sh), an implementation livekv did
// not write.
TEST_F(Gpt2Test, MatchesGpt3EncoderOnCorpus) {
  const std::vector<CorpusCase> corpus = ReadCorpus("gpt2_corpus.jsonl");
  ASSERT_GE(corpus.size(), 300u);
  int mismatches = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const CorpusCase& c = corpus[i];
    const std::vector<int32_t> ids = MustEncode(tok(), c.text);
    if (ids != c.ids && ++mismatches <= 10) {
      ADD_FAILURE() << "corpus line " << i + 1 << " \"" << absl::CHexEscape(c.text) << "\"\n  expected "
                    << ::testing::PrintToString(c.ids) << "\n  got      " << ::testing::PrintToString(ids);
    }
    EXPECT_EQ(MustDecode(tok(), c.ids), c.text) << "corpus line " << i + 1;
  }
  EXPECT_EQ(mismatches, 0) << "of " << corpus.size() << " corpus lines";
}

TEST_F(Gpt2Test, VocabularyAndSpecialTokens) {
  EXPECT_EQ(tok().vocab_size(), 50257);
  EXPECT_EQ(tok().bos_id(), 50256);  // from tokenizer_config.json
  EXPECT_EQ(tok().eos_id(), 50256);
  EXPECT_FALSE(tok().adds_bos());
  EXPECT_EQ(*tok().TokenId("<|endoftext|>"), 50256);
  EXPECT_EQ(*tok().TokenId("\xC4\xA0the"), 262);  // "Ġthe"
  EXPECT_EQ(tok().TokenId("<|im_start|>").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(MustEncode(tok(), "Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(*tok().EncodeWithSpecials("Hello world"), (std::vector<int32_t>{15496, 995}));  // no template
}

TEST_F(Gpt2Test, SpecialTokensParsedOnlyWhenAsked) {
  const std::string text = "before<|endoftext|>after";
  const std::vector<int32_t> plain = MustEncode(tok(), text);
  EXPECT_THAT(plain, Not(::testing::Contains(50256)));
  EXPECT_EQ(MustDecode(tok(), plain), text);
  EXPECT_EQ(MustEncode(tok(), text, /*parse_special=*/true),
            Concat({MustEncode(tok(), "before"), {50256}, MustEncode(tok(), "after")}));
  EXPECT_EQ(MustEncode(tok(), "<|endoftext|><|endoftext|>", true), (std::vector<int32_t>{50256, 50256}));
  // A partial special token is text.
  EXPECT_EQ(MustEncode(tok(), "<|endoftext|", true), MustEncode(tok(), "<|endoftext|"));
  EXPECT_EQ(MustDecode(tok(), {50256}), "<|endoftext|>");
}

TEST_F(Gpt2Test, InvalidUtf8IsRejectedWithOffset) {
  struct Case {
    std::string text;
    size_t offset;
  };
  const Case cases[] = {
      {"abc\xFF", 3},           // never a UTF-8 byte
      {"ab\xC3", 2},            // truncated 2-byte sequence
      {"x\xE2\x82", 1},         // truncated 3-byte sequence
      {"\xC0\xAF", 0},          // overlong '/'
      {"ok \xED\xA0\x80", 3},   // UTF-16 surrogate
      {"\xF4\x90\x80\x80", 0},  // above U+10FFFF
      {"caf\xC3\xA9 \x80", 6},  // stray continuation byte after valid text
  };
  for (const Case& c : cases) {
    const absl::Status s = tok().Encode(c.text).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << absl::CHexEscape(c.text);
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("byte offset ", c.offset))) << absl::CHexEscape(c.text);
  }
}

TEST_F(Gpt2Test, DecodeRejectsUnknownIds) {
  for (const int32_t id : {-1, 50257, 1 << 30}) {
    const absl::Status s = tok().DecodeBytes({15496, id}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("token id ", id, " at position 1")));
  }
}

TEST_F(Gpt2Test, EmptyAndLongInputs) {
  EXPECT_THAT(MustEncode(tok(), ""), IsEmpty());
  // Long runs stress the regex (backtracking of \s+(?!\S)) and the merge loop.
  for (const std::string& text :
       {std::string(100000, ' ') + "x", std::string(100000, 'a'), std::string(50000, '\n'), std::string(30000, '9')}) {
    const std::vector<int32_t> ids = MustEncode(tok(), text);
    EXPECT_EQ(MustDecode(tok(), ids), text);
  }
}

TEST_F(Gpt2Test, StreamingDecoderReassemblesEmojiSplitAcrossTokens) {
  const std::string text =
      "Family: \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 ok "
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xE6\x97\xA5\xE6\x9C\xAC!";  // 👨‍👩‍👧 ok 👍🏽 日本!
  const std::vector<int32_t> ids = MustEncode(tok(), text);
  // The point of the test: some tokens are fragments of a character.
  int fragments = 0;
  for (const int32_t id : ids) fragments += FindInvalidUtf8(MustDecode(tok(), {id})).has_value();
  ASSERT_GT(fragments, 0);

  StreamingDecoder decoder(&tok());
  std::string streamed;
  for (const int32_t id : ids) {
    absl::StatusOr<std::string> piece = decoder.Push(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    EXPECT_FALSE(FindInvalidUtf8(*piece).has_value()) << absl::CHexEscape(*piece);
    EXPECT_THAT(*piece, Not(HasSubstr("\xEF\xBF\xBD")));  // U+FFFD
    streamed += *piece;
  }
  EXPECT_EQ(decoder.Flush(), "");
  EXPECT_EQ(streamed, text);
}

TEST_F(Gpt2Test, ConcurrentEncodesAgree) {
  const std::vector<CorpusCase> corpus = ReadCorpus("gpt2_corpus.jsonl");
  // A fresh tokenizer so the threads race on an empty word cache.
  const std::unique_ptr<BpeTokenizer> fresh = MustCreate(ReadTestFile("gpt2/tokenizer.json"));
  std::vector<int> failures(8, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < corpus.size(); ++i) {
        const CorpusCase& c = corpus[(i + t * 97) % corpus.size()];
        absl::StatusOr<std::vector<int32_t>> ids = fresh->Encode(c.text);
        if (!ids.ok() || *ids != c.ids) ++failures[t];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(failures, ::testing::Each(0));
}

// ---------------------------------------------------------------------------------------------------------------
// Other configurations on GPT-2's vocabulary
// ---------------------------------------------------------------------------------------------------------------

TEST(BpeVariantsTest, Llama3StyleSplit) {
  const std::unique_ptr<BpeTokenizer> gpt2 = MustCreate(VariantJson("gpt2"));
  const std::unique_ptr<BpeTokenizer> llama = MustCreate(VariantJson("gpt2_llama3_split"));
  ASSERT_NE(llama, nullptr);
  // Digits come in groups of at most three (GPT-2 keeps the whole run as one pre-token).
  EXPECT_EQ(MustEncode(*llama, "12345678"),
            Concat({MustEncode(*gpt2, "123"), MustEncode(*gpt2, "456"), MustEncode(*gpt2, "78")}));
  EXPECT_NE(MustEncode(*gpt2, "12345678"), MustEncode(*llama, "12345678"));
  // Contractions are case-insensitive: "'S" is one pre-token, as "'s" is.
  EXPECT_EQ(MustEncode(*llama, "IT'S"), Concat({MustEncode(*gpt2, "IT"), MustEncode(*gpt2, "'S")}));
  EXPECT_EQ(MustEncode(*gpt2, "IT'S"),
            Concat({MustEncode(*gpt2, "IT"), MustEncode(*gpt2, "'"), MustEncode(*gpt2, "S")}));
  // Punctuation keeps the newlines that follow it; a letter run takes one leading non-letter.
  EXPECT_EQ(MustEncode(*llama, "end.\n\nNext"),
            Concat({MustEncode(*gpt2, "end"), MustEncode(*gpt2, ".\n\n"), MustEncode(*gpt2, "Next")}));
  EXPECT_EQ(MustEncode(*llama, "(hello)"), Concat({MustEncode(*gpt2, "(hello"), MustEncode(*gpt2, ")")}));
  // Template: BOS (here <|endoftext|>) in front; bos_id comes from the template when there is no config.
  EXPECT_EQ(llama->template_prefix(), (std::vector<int32_t>{50256}));
  EXPECT_TRUE(llama->template_suffix().empty());
  EXPECT_EQ(llama->bos_id(), 50256);
  EXPECT_TRUE(llama->adds_bos());
  EXPECT_EQ(*llama->EncodeWithSpecials("Hello world"), (std::vector<int32_t>{50256, 15496, 995}));
  EXPECT_EQ(MustEncode(*llama, "Hello world"), (std::vector<int32_t>{15496, 995}));
  // Round trip over the corpus.
  for (const CorpusCase& c : ReadCorpus("gpt2_corpus.jsonl")) {
    EXPECT_EQ(MustDecode(*llama, MustEncode(*llama, c.text)), c.text) << absl::CHexEscape(c.text);
  }
}

TEST(BpeVariantsTest, Qwen2StyleSplitWithNfc) {
  const std::unique_ptr<BpeTokenizer> gpt2 = MustCreate(VariantJson("gpt2"));
  const std::unique_ptr<BpeTokenizer> qwen = MustCreate(VariantJson("gpt2_qwen2_split_nfc"));
  ASSERT_NE(qwen, nullptr);
  // NFC composes e + U+0301 into é before tokenizing; without a normalizer the two spellings differ.
  const std::string decomposed = "cafe\xCC\x81";
  const std::string composed = "caf\xC3\xA9";
  EXPECT_EQ(MustEncode(*qwen, decomposed), MustEncode(*qwen, composed));
  EXPECT_NE(MustEncode(*gpt2, decomposed), MustEncode(*gpt2, composed));
  EXPECT_EQ(MustDecode(*qwen, MustEncode(*qwen, decomposed)), composed);
  // Single digits.
  EXPECT_EQ(MustEncode(*qwen, "2024"),
            Concat({MustEncode(*gpt2, "2"), MustEncode(*gpt2, "0"), MustEncode(*gpt2, "2"), MustEncode(*gpt2, "4")}));
}

TEST(BpeVariantsTest, AddPrefixSpace) {
  const std::unique_ptr<BpeTokenizer> gpt2 = MustCreate(VariantJson("gpt2"));
  const std::unique_ptr<BpeTokenizer> prefixed = MustCreate(VariantJson("gpt2_prefix_space"));
  EXPECT_EQ(MustEncode(*prefixed, "hello"), MustEncode(*gpt2, " hello"));
  EXPECT_EQ(MustEncode(*prefixed, " hello"), MustEncode(*gpt2, " hello"));
  // Each piece between added tokens gets its own space, as in `tokenizers`.
  EXPECT_EQ(MustEncode(*prefixed, "a<|endoftext|>b", true),
            Concat({MustEncode(*gpt2, " a"), {50256}, MustEncode(*gpt2, " b")}));
}

// Expected ids from Hugging Face `tokenizers` (tools/tokenizer/hf_reference.py), when they have been generated.
TEST(BpeVariantsTest, MatchesHuggingFaceReference) {
  const Json variants = Json::parse(ReadTestFile("variants.json"));
  int checked = 0;
  for (const auto& [name, unused] : variants.items()) {
    if (name.rfind("//", 0) == 0) continue;
    const std::string expected_path = absl::StrCat(kTestdata, "/hf_expected/", name, ".jsonl");
    if (!FileExists(expected_path)) continue;
    const std::unique_ptr<BpeTokenizer> t = MustCreate(VariantJson(name));
    ASSERT_NE(t, nullptr) << name;
    int mismatches = 0;
    for (const char* key : {"ids", "ids_parse_special", "ids_with_specials"}) {
      const std::vector<CorpusCase> cases = ReadCorpus(absl::StrCat("hf_expected/", name, ".jsonl"), key);
      ASSERT_GE(cases.size(), 300u) << name;
      for (const CorpusCase& c : cases) {
        const absl::string_view k = key;
        absl::StatusOr<std::vector<int32_t>> ids =
            k == "ids_with_specials" ? t->EncodeWithSpecials(c.text) : t->Encode(c.text, k == "ids_parse_special");
        ASSERT_TRUE(ids.ok()) << ids.status();
        if (*ids != c.ids && ++mismatches <= 10) {
          ADD_FAILURE() << name << " " << key << " \"" << absl::CHexEscape(c.text) << "\"\n  expected "
                        << ::testing::PrintToString(c.ids) << "\n  got      " << ::testing::PrintToString(*ids);
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << name;
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no testdata/hf_expected/*.jsonl yet; run tools/tokenizer/hf_reference.py";
}

// ---------------------------------------------------------------------------------------------------------------
// Small hand-made tokenizers
// ---------------------------------------------------------------------------------------------------------------

TEST(BpeTinyTest, MergesByRankInBothFormats) {
  const std::vector<std::string> extra = {"aa", "ab", "aab", "aaa"};
  const std::vector<std::pair<std::string, std::string>> merges = {{"a", "a"}, {"a", "b"}, {"aa", "b"}};
  for (const bool as_pairs : {false, true}) {
    const std::unique_ptr<BpeTokenizer> t = MustCreate(TinyTokenizer(extra, merges, as_pairs).dump());
    ASSERT_NE(t, nullptr);
    // aaab: "a a" (rank 0) merges positions 0-1 -> [aa, a, b]; then "a b" (rank 1) -> [aa, ab].
    EXPECT_EQ(MustEncode(*t, "aaab"), (std::vector<int32_t>{256, 257}));
    // aab: [aa, b] -> "aa b" (rank 2) -> [aab].
    EXPECT_EQ(MustEncode(*t, "aab"), (std::vector<int32_t>{258}));
    // aaaa: two "a a" merges, left to right.
    EXPECT_EQ(MustEncode(*t, "aaaa"), (std::vector<int32_t>{256, 256}));
    // "aaa" is in the vocab but no merge makes it: [aa, a].
    EXPECT_EQ(MustEncode(*t, "aaa"), (std::vector<int32_t>{256, 'a'}));
  }
}

TEST(BpeTinyTest, IgnoreMergesEmitsWholeVocabPieces) {
  Json j = TinyTokenizer({"aa", "aaa"}, {{"a", "a"}});
  EXPECT_EQ(MustEncode(*MustCreate(j.dump()), "aaa"), (std::vector<int32_t>{256, 'a'}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(MustEncode(*MustCreate(j.dump()), "aaa"), (std::vector<int32_t>{257}));
}

TEST(BpeTinyTest, AddedTokens) {
  Json j = TinyTokenizer({}, {});
  j["added_tokens"] = Json::array({
      {{"id", 256}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
      {{"id", 257}, {"content", "<mask>"}, {"special", true}, {"lstrip", true}, {"normalized", false}},
      {{"id", 258}, {"content", "<sep>"}, {"special", true}, {"rstrip", true}, {"normalized", false}},
      {{"id", 259}, {"content", "ab"}, {"special", false}, {"normalized", false}},
      {{"id", 260}, {"content", "abc"}, {"special", false}, {"normalized", false}},
  });
  const std::unique_ptr<BpeTokenizer> t = MustCreate(j.dump());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 261);
  const int32_t space = ' ';  // byte b has id b in this vocab
  // Non-special added tokens are always matched, the longest first.
  EXPECT_EQ(MustEncode(*t, "xabcab"), (std::vector<int32_t>{'x', 260, 259}));
  // Special ones only with parse_special.
  EXPECT_EQ(MustEncode(*t, "<s>x"), (std::vector<int32_t>{'<', 's', '>', 'x'}));
  EXPECT_EQ(MustEncode(*t, "<s>x", true), (std::vector<int32_t>{256, 'x'}));
  // lstrip swallows the whitespace before, rstrip the whitespace after.
  EXPECT_EQ(MustEncode(*t, "x  <mask> y", true), (std::vector<int32_t>{'x', 257, space, 'y'}));
  EXPECT_EQ(MustEncode(*t, "x <sep>  y", true), (std::vector<int32_t>{'x', space, 258, 'y'}));
  EXPECT_EQ(*t->TokenId("<mask>"), 257);
  EXPECT_EQ(MustDecode(*t, {256, 'x', 259}), "<s>xab");
}

TEST(BpeTinyTest, ConfigBosEosAndAddedTokensDecoder) {
  Json j = TinyTokenizer({}, {});
  j["added_tokens"] = Json::array({{{"id", 256}, {"content", "<|begin|>"}, {"special", true}}});
  const Json config = {
      {"bos_token", {{"content", "<|begin|>"}, {"lstrip", false}}},
      {"eos_token", "<|end|>"},
      {"added_tokens_decoder",
       {{"256", {{"content", "<|begin|>"}, {"special", true}}}, {"300", {{"content", "<|end|>"}, {"special", true}}}}},
  };
  const std::unique_ptr<BpeTokenizer> t = MustCreate(j.dump(), config.dump());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 256);
  EXPECT_EQ(t->eos_id(), 300);
  EXPECT_EQ(t->vocab_size(), 301);
  EXPECT_EQ(MustEncode(*t, "a<|end|>", true), (std::vector<int32_t>{'a', 300}));
  EXPECT_FALSE(t->adds_bos());  // no template
  // Ids between the vocabulary and the added token belong to nothing.
  EXPECT_EQ(t->DecodeBytes({280}).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------------------------
// Malformed and unsupported files
// ---------------------------------------------------------------------------------------------------------------

void ExpectInvalid(const absl::Status& s, std::initializer_list<absl::string_view> fragments) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const absl::string_view f : fragments) EXPECT_THAT(s.message(), HasSubstr(std::string(f))) << s;
}

TEST(BpeMalformedTest, GarbledJson) {
  ExpectInvalid(CreateStatus("{\"model\": {\"vocab\": [1, 2"), {"bad/tokenizer.json", "not valid JSON"});
  ExpectInvalid(CreateStatus(""), {"bad/tokenizer.json", "not valid JSON"});
  ExpectInvalid(CreateStatus("[1, 2, 3]"), {"bad/tokenizer.json", "expected an object"});
}

TEST(BpeMalformedTest, MissingOrWrongFields) {
  Json j = TinyTokenizer({}, {});
  j.erase("model");
  ExpectInvalid(CreateStatus(j.dump()), {"bad/tokenizer.json", "field model: missing"});

  j = TinyTokenizer({}, {});
  j["model"].erase("merges");
  ExpectInvalid(CreateStatus(j.dump()), {"field model.merges: missing"});

  j = TinyTokenizer({}, {});
  j["model"]["type"] = "WordPiece";
  ExpectInvalid(CreateStatus(j.dump()), {"field model.type", "WordPiece"});

  j = TinyTokenizer({}, {});
  j["model"]["vocab"]["x"] = "seven";
  ExpectInvalid(CreateStatus(j.dump()), {"model.vocab[\"x\"]", "expected a token id"});

  j = TinyTokenizer({}, {});
  j["model"]["vocab"]["xy"] = -4;
  ExpectInvalid(CreateStatus(j.dump()), {"model.vocab", "negative"});

  j = TinyTokenizer({}, {});
  j["model"]["vocab"]["xy"] = 5;  // id 5 is byte 0x05's
  ExpectInvalid(CreateStatus(j.dump()), {"model.vocab", "id 5 is given to both"});

  j = TinyTokenizer({}, {});
  j["model"]["vocab"].erase("a");
  ExpectInvalid(CreateStatus(j.dump()), {"model.vocab", "byte 0x61"});

  j = TinyTokenizer({}, {});
  j["model"]["dropout"] = 0.1;
  ExpectInvalid(CreateStatus(j.dump()), {"model.dropout"});
}

TEST(BpeMalformedTest, MergesReferencingUnknownTokens) {
  ExpectInvalid(CreateStatus(TinyTokenizer({"ab"}, {{"a", "b"}, {"a", "zz"}}).dump()),
                {"field model.merges[1]", "\"zz\" is not in model.vocab"});
  ExpectInvalid(CreateStatus(TinyTokenizer({}, {{"a", "b"}}).dump()),
                {"field model.merges[0]", "merged token \"ab\" is not in model.vocab"});
  Json j = TinyTokenizer({"ab"}, {});
  j["model"]["merges"] = Json::array({"a b c"});
  ExpectInvalid(CreateStatus(j.dump()), {"field model.merges[0]"});
  j["model"]["merges"] = Json::array({Json::array({"a"})});
  ExpectInvalid(CreateStatus(j.dump()), {"field model.merges[0]"});
}

TEST(BpeMalformedTest, UnsupportedComponents) {
  Json j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  ExpectInvalid(CreateStatus(j.dump()), {"field pre_tokenizer.type", "Metaspace"});

  j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", Json::array({{{"type", "ByteLevel"}}, {{"type", "Whitespace"}}})}};
  ExpectInvalid(CreateStatus(j.dump()), {"field pre_tokenizer.pretokenizers[1].type", "Whitespace"});

  j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", Json::array({{{"type", "ByteLevel"}}, {{"type", "Digits"}}})}};
  ExpectInvalid(CreateStatus(j.dump()), {"field pre_tokenizer.pretokenizers[0]", "last"});

  j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Isolated"}};
  ExpectInvalid(CreateStatus(j.dump()), {"pre_tokenizer", "needs a ByteLevel"});

  j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array({{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
                    {{"type", "ByteLevel"}}})}};
  ExpectInvalid(CreateStatus(j.dump()), {"field pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile"});

  j = TinyTokenizer({}, {});
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers", Json::array({{{"type", "Split"}, {"pattern", {{"Regex", "\\s"}}}, {"behavior", "Removed"}},
                                     {{"type", "ByteLevel"}}})}};
  ExpectInvalid(CreateStatus(j.dump()), {"field pre_tokenizer.pretokenizers[0].behavior", "Removed"});

  j = TinyTokenizer({}, {});
  j["normalizer"] = {{"type", "NFKC"}};
  ExpectInvalid(CreateStatus(j.dump()), {"field normalizer.type", "NFKC"});

  j = TinyTokenizer({}, {});
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectInvalid(CreateStatus(j.dump()), {"field decoder.type", "WordPiece"});

  j = TinyTokenizer({}, {});
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  ExpectInvalid(CreateStatus(j.dump()), {"field post_processor.type", "RobertaProcessing"});

  j = TinyTokenizer({}, {});
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}})},
                         {"special_tokens", Json::object()}};
  ExpectInvalid(CreateStatus(j.dump()), {"field post_processor.special_tokens.<s>", "missing"});

  j = TinyTokenizer({}, {});
  j["added_tokens"] = Json::array({{{"id", 256}, {"content", "<x>"}, {"single_word", true}}});
  ExpectInvalid(CreateStatus(j.dump()), {"field added_tokens[0].single_word"});

  j = TinyTokenizer({}, {});
  j["added_tokens"] = Json::array({{{"id", 3}, {"content", "<x>"}}});  // id 3 is byte 0x03's
  ExpectInvalid(CreateStatus(j.dump()), {"field added_tokens[0]", "belongs to"});
}

TEST(BpeMalformedTest, BadTokenizerConfig) {
  const std::string tokenizer = TinyTokenizer({}, {}).dump();
  ExpectInvalid(CreateStatus(tokenizer, "{bos_token: 1}"), {"bad/tokenizer_config.json", "not valid JSON"});
  ExpectInvalid(CreateStatus(tokenizer, R"({"bos_token": "<nope>"})"),
                {"bad/tokenizer_config.json: field bos_token", "<nope>"});
  ExpectInvalid(CreateStatus(tokenizer, R"({"eos_token": 7})"), {"bad/tokenizer_config.json: field eos_token"});
  ExpectInvalid(CreateStatus(tokenizer, R"({"added_tokens_decoder": {"x": {"content": "<a>"}}})"),
                {"bad/tokenizer_config.json: field added_tokens_decoder"});
}

}  // namespace
}  // namespace livekv
