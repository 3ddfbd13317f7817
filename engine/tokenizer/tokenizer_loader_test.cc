#include "engine/tokenizer/tokenizer_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/byte_tokenizer.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

// A fresh directory under the test's temporary directory.
std::string MakeDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = JoinPath(tmp != nullptr ? tmp : "/tmp", absl::StrCat("tokenizer_loader_test_", name));
  EXPECT_TRUE(MakeDirectories(dir).ok());
  return dir;
}

TEST(TokenizerLoaderTest, HuggingFaceDirectory) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTokenizer("engine/tokenizer/testdata/gpt2");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_NE(dynamic_cast<BpeTokenizer*>(t->get()), nullptr);
  EXPECT_EQ((*t)->vocab_size(), 50257);
  EXPECT_EQ((*t)->eos_id(), 50256);  // tokenizer_config.json was read
  EXPECT_EQ(*(*t)->Encode("Hello world"), (std::vector<int32_t>{15496, 995}));
}

TEST(TokenizerLoaderTest, ByteTokenizerDirectory) {
  const std::string dir = MakeDir("byte");
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "livekv_tokenizer.json"), R"({"type": "byte"})").ok());
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTokenizer(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_NE(dynamic_cast<ByteTokenizer*>(t->get()), nullptr);
  EXPECT_EQ((*t)->vocab_size(), 259);
}

TEST(TokenizerLoaderTest, UnknownLivekvTokenizerType) {
  const std::string dir = MakeDir("unknown_type");
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "livekv_tokenizer.json"), R"({"type": "unigram"})").ok());
  const absl::Status s = LoadTokenizer(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("livekv_tokenizer.json: field type"));
  EXPECT_THAT(s.message(), HasSubstr("unigram"));
}

TEST(TokenizerLoaderTest, MalformedTokenizerJsonNamesThePath) {
  const std::string dir = MakeDir("garbled");
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "tokenizer.json"), "{\"model\": ").ok());
  const absl::Status s = LoadTokenizer(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(JoinPath(dir, "tokenizer.json")));
}

TEST(TokenizerLoaderTest, EmptyDirectoryIsNotFound) {
  const std::string dir = MakeDir("empty");
  const absl::Status s = LoadTokenizer(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir));
  EXPECT_EQ(LoadTokenizer("/nonexistent/model").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace livekv
