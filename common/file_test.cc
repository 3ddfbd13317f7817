#include "common/file.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace livekv {
namespace {

std::string TmpDir() {
  const char* d = std::getenv("TEST_TMPDIR");
  return d ? d : "/tmp";
}

TEST(FileTest, WriteThenReadRoundTrips) {
  const std::string dir = JoinPath(TmpDir(), "a/b/c");
  ASSERT_TRUE(MakeDirectories(dir).ok());
  const std::string path = JoinPath(dir, "x.bin");
  const std::string data("hello\0world", 11);
  ASSERT_TRUE(WriteFileAtomically(path, data).ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, data);
  EXPECT_TRUE(FileExists(path));
  EXPECT_FALSE(FileExists(path + ".tmp." + std::to_string(::getpid())));
}

TEST(FileTest, MissingFileIsNotFound) {
  auto read = ReadFileToString(JoinPath(TmpDir(), "does-not-exist"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("does-not-exist"), std::string::npos);
}

TEST(FileTest, SizeLimitIsEnforced) {
  const std::string path = JoinPath(TmpDir(), "big.bin");
  ASSERT_TRUE(WriteFileAtomically(path, std::string(100, 'x')).ok());
  EXPECT_EQ(ReadFileToString(path, 99).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(FileTest, JoinPath) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
}

}  // namespace
}  // namespace livekv
