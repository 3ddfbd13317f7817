#include "models/eval_set.h"

#include <cstdlib>

#include "common/file.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

std::string TmpFile(const std::string& name, const std::string& text) {
  const char* d = std::getenv("TEST_TMPDIR");
  const std::string path = JoinPath(d ? d : "/tmp", name);
  EXPECT_TRUE(WriteFileAtomically(path, text).ok());
  return path;
}

TEST(EvalSetTest, SplitsPromptAtTheLastQuestion) {
  const std::string path =
      TmpFile("ok.jsonl",
              "{\"prompt\": \"What is here stays. The key is 7. What is the key?\", \"answer\": \" 7.\"}\n"
              "{\"prompt\": \"second\", \"answer\": \"x\"}\n");
  auto docs = ReadEvalDocs(path);
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 2u);
  EXPECT_EQ((*docs)[0].document(), "What is here stays. The key is 7. ");
  EXPECT_EQ((*docs)[0].question(), "What is the key?");
  EXPECT_EQ((*docs)[0].answer, " 7.");
  EXPECT_EQ((*docs)[1].document(), "second");  // no question: all document
  EXPECT_EQ((*docs)[1].question(), "");
  EXPECT_EQ(ReadEvalDocs(path, 1)->size(), 1u);
  EXPECT_EQ(ReadEvalDoc(path, 1)->answer, "x");
  EXPECT_EQ(ReadEvalDoc(path, 2).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(EvalSetTest, MalformedLinesAreNamed) {
  const std::string path = TmpFile("bad.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": 3}\n");
  auto docs = ReadEvalDocs(path);
  EXPECT_EQ(docs.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(docs.status().message().find("bad.jsonl:2"), std::string::npos) << docs.status();
  EXPECT_EQ(ReadEvalDocs(TmpFile("junk.jsonl", "not json\n")).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EvalSetTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadEvalDocs("/nonexistent/x.jsonl").status().code(), absl::StatusCode::kNotFound);
}

TEST(EvalSetTest, ShippedSetsParse) {
  auto docs = ReadEvalDocs("models/tiny/eval/passkey_1024.jsonl");
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_FALSE(docs->empty());
  for (const EvalDoc& d : *docs) {
    EXPECT_FALSE(d.question().empty());
    EXPECT_FALSE(d.answer.empty());
  }
}

}  // namespace
}  // namespace livekv
