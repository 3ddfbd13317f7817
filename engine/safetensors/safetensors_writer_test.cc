#include "engine/safetensors/safetensors_writer.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/safetensors/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string TestPath(absl::string_view suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), info->test_suite_name(), ".", info->name(), suffix);
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t HeaderLength(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  return n;
}

// Random bytes for a tensor of `shape` and `dtype`, kept alive in `storage`.
TensorToWrite MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                         std::vector<std::vector<uint8_t>>* storage, std::mt19937* rng) {
  size_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= d;
  storage->emplace_back(n);
  for (uint8_t& b : storage->back()) b = static_cast<uint8_t>((*rng)());
  return {std::move(name), dtype, std::move(shape), storage->back()};
}

void ExpectSameTensor(const TensorInfo& got, const TensorToWrite& want) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.dtype, want.dtype) << want.name;
  EXPECT_EQ(got.shape, want.shape) << want.name;
  ASSERT_EQ(got.nbytes, want.data.size()) << want.name;
  EXPECT_EQ(std::vector<uint8_t>(got.data, got.data + got.nbytes),
            std::vector<uint8_t>(want.data.begin(), want.data.end()))
      << want.name;
}

TEST(WriteSafetensorsTest, RoundTripsEveryDtypeAndShape) {
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(16);
  std::mt19937 rng(1);
  const std::vector<TensorToWrite> tensors = {
      MakeTensor("model.embed_tokens.weight", DType::kF32, {2, 3}, &storage, &rng),
      MakeTensor("bf16", DType::kBF16, {5}, &storage, &rng),
      MakeTensor("f16", DType::kF16, {1, 1, 7}, &storage, &rng),
      MakeTensor("scalar", DType::kI32, {}, &storage, &rng),
      MakeTensor("empty", DType::kI64, {3, 0}, &storage, &rng),
      MakeTensor("u8", DType::kU8, {13}, &storage, &rng),
      MakeTensor("i64", DType::kI64, {2, 2}, &storage, &rng),
  };
  const std::string path = TestPath(".safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) ExpectSameTensor((*file)->tensors()[i], tensors[i]);
  EXPECT_EQ((*file)->Find("scalar")->num_elements(), 1);
  EXPECT_EQ((*file)->Find("empty")->num_elements(), 0);
  EXPECT_TRUE((*file)->metadata().empty());

  // Packed in the order given, with no holes.
  const uint8_t* cursor = (*file)->data_region().data();
  for (const TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(t.data, cursor) << t.name;
    cursor += t.nbytes;
  }
  for (const std::string& name : ListDir(::testing::TempDir())) {
    EXPECT_FALSE(absl::StrContains(name, ".tmp.")) << "temporary file left behind: " << name;
  }
}

TEST(WriteSafetensorsTest, RoundTripsMetadata) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"quote\"and\\slash", "line\nbreak\ttab"}, {"unicode", "\xc3\xbc\xe2\x82\xac"}, {"", ""}};
  const std::string path = TestPath(".safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}, metadata).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST(WriteSafetensorsTest, PadsHeaderSoDataStartsAtMultipleOf8) {
  const std::vector<uint8_t> one = {42};
  for (size_t name_len = 1; name_len <= 17; ++name_len) {
    const std::string path = TestPath(absl::StrCat(name_len, ".safetensors"));
    ASSERT_TRUE(WriteSafetensors(path, {{std::string(name_len, 'x'), DType::kU8, {1}, one}}).ok());
    const std::string bytes = ReadBytes(path);
    const uint64_t n = HeaderLength(bytes);
    EXPECT_EQ((8 + n) % 8, 0u) << name_len;
    ASSERT_EQ(bytes.size(), 8 + n + 1);
    const std::string header = bytes.substr(8, n);
    const size_t close = header.rfind('}');
    EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << "padding must be spaces";
    EXPECT_LT(header.size() - close - 1, 8u);
    EXPECT_EQ(bytes.back(), 42);
  }
}

TEST(WriteSafetensorsTest, EmptyFileIsValid) {
  const std::string path = TestPath(".safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  EXPECT_EQ(ReadBytes(path), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST(WriteSafetensorsTest, RejectsBadTensorsWithoutTouchingTheTarget) {
  const std::string path = TestPath(".safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  const std::string before = ReadBytes(path);
  const std::vector<uint8_t> eight(8);
  const struct {
    std::vector<TensorToWrite> tensors;
    const char* message;
  } cases[] = {
      {{{"w", DType::kF32, {3}, eight}}, "tensor \"w\": data has 8 bytes, but shape [3] of F32 needs 12"},
      {{{"w", DType::kU8, {-8}, eight}}, "tensor \"w\": negative dim in shape [-8]"},
      {{{"w", DType::kU8, {8}, eight}, {"w", DType::kU8, {8}, eight}}, "duplicate tensor name \"w\""},
      {{{"__metadata__", DType::kU8, {8}, eight}}, "tensor \"__metadata__\": reserved name"},
      {{{"bad\xff", DType::kU8, {8}, eight}}, "tensor name is not valid UTF-8"},
      {{{"w", static_cast<DType>(77), {8}, eight}}, "bad dtype 77"},
      {{{"w", DType::kF32, {int64_t{1} << 62, 4}, eight}}, "overflows 2^64 bytes"},
  };
  for (const auto& c : cases) {
    const absl::Status s = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
  const absl::Status s = WriteSafetensors(path, {}, {{"k", "\xc3"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("metadata value of \"k\" is not valid UTF-8"));
  EXPECT_EQ(ReadBytes(path), before);
}

TEST(WriteSafetensorsTest, ReplacesExistingFileAndReportsIoErrors) {
  const std::string path = TestPath(".safetensors");
  const std::vector<uint8_t> v1 = {1}, v2 = {2, 3};
  ASSERT_TRUE(WriteSafetensors(path, {{"v", DType::kU8, {1}, v1}}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"v", DType::kU8, {2}, v2}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("v")->nbytes, 2u);

  const std::string missing = TestPath("/no/such/dir/x.safetensors");
  const absl::Status s = WriteSafetensors(missing, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(missing));
}

TEST(WriteShardedSafetensorsTest, RoundTripsThroughOpenDir) {
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(16);
  std::mt19937 rng(2);
  const std::vector<TensorToWrite> tensors = {
      MakeTensor("a", DType::kF32, {10}, &storage, &rng),    // 40 bytes: shard 1
      MakeTensor("b", DType::kU8, {60}, &storage, &rng),     // 60: shard 1, now exactly full
      MakeTensor("c", DType::kBF16, {}, &storage, &rng),     // 2: shard 2
      MakeTensor("big", DType::kI64, {20}, &storage, &rng),  // 160 > max: shard 3, alone
      MakeTensor("z", DType::kF16, {0}, &storage, &rng),     // 0: shard 3 is over the limit, so shard 4
      MakeTensor("d", DType::kI32, {5, 5}, &storage, &rng),  // 100: 0 + 100 fits in shard 4
  };
  const std::string dir = TestPath("");
  ASSERT_TRUE(WriteShardedSafetensors(dir, tensors, 100).ok());
  EXPECT_THAT(ListDir(dir), ElementsAre("model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                        "model.safetensors.index.json"));

  const nlohmann::json index = nlohmann::json::parse(ReadBytes(dir + "/model.safetensors.index.json"), nullptr, false);
  ASSERT_TRUE(index.is_object());
  EXPECT_EQ(index["metadata"]["total_size"], 40 + 60 + 2 + 160 + 0 + 100);
  EXPECT_EQ(index["weight_map"]["a"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["b"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["z"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["d"], "model-00004-of-00004.safetensors");

  auto shard = SafetensorsFile::Open(dir + "/model-00001-of-00004.safetensors");
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ((*shard)->metadata().at("format"), "pt");
  EXPECT_EQ((*shard)->tensors().size(), 2u);

  auto set = SafetensorsSet::OpenDir(dir);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT((*set)->names(), ElementsAre("a", "b", "big", "c", "d", "z"));
  for (const TensorToWrite& t : tensors) {
    auto got = (*set)->Get(t.name);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameTensor(**got, t);
  }
}

TEST(WriteShardedSafetensorsTest, OneShardAndNoTensors) {
  const std::vector<uint8_t> v = {1, 2};
  const std::string dir = TestPath("");
  ASSERT_TRUE(WriteShardedSafetensors(dir, {{"v", DType::kU8, {2}, v}}, 1 << 20).ok());
  EXPECT_THAT(ListDir(dir), ElementsAre("model-00001-of-00001.safetensors", "model.safetensors.index.json"));
  auto set = SafetensorsSet::OpenDir(dir);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT((*set)->names(), ElementsAre("v"));

  const std::string empty_dir = TestPath(".empty");
  ASSERT_TRUE(WriteShardedSafetensors(empty_dir, {}, 100).ok());
  auto empty = SafetensorsSet::OpenDir(empty_dir);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->names().empty());
}

TEST(WriteShardedSafetensorsTest, RefusesToBeShadowedAndZeroShardSize) {
  const std::string dir = TestPath("");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {}).ok());
  absl::Status s = WriteShardedSafetensors(dir, {}, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr(dir + "/model.safetensors"));

  s = WriteShardedSafetensors(TestPath(".zero"), {}, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Exists(TestPath(".zero")));
}

TEST(WriteShardedSafetensorsTest, ValidatesEverythingBeforeWriting) {
  const std::vector<uint8_t> v = {1, 2};
  const std::string dir = TestPath("");
  const absl::Status s =
      WriteShardedSafetensors(dir, {{"ok", DType::kU8, {2}, v}, {"bad", DType::kF32, {2}, v}}, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor \"bad\""));
  EXPECT_FALSE(Exists(dir));
}

TEST(SafetensorsSetSingleFileTest, OpensModelSafetensors) {
  const std::vector<uint8_t> v = {1, 2, 3, 4};
  const std::string dir = TestPath("");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"lm_head.weight", DType::kBF16, {2}, v}, {"norm", DType::kU8, {2}, {v.data(), 2}}})
                  .ok());
  auto set = SafetensorsSet::OpenDir(dir + "/");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT((*set)->names(), ElementsAre("lm_head.weight", "norm"));
  EXPECT_TRUE((*set)->Has("norm"));
  auto t = (*set)->Get("lm_head.weight");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->dtype, DType::kBF16);
  auto missing = (*set)->Get("absent");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir + "/model.safetensors"));
}

}  // namespace
}  // namespace livekv
