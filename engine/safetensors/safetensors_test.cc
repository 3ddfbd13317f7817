#include "engine/safetensors/safetensors.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/safetensors/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A fresh path under TEST_TMPDIR, unique per test.
std::string TestPath(absl::string_view suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), info->test_suite_name(), ".", info->name(), suffix);
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out;
}

// A file image: length field, header, data region.
std::string Image(absl::string_view header, absl::string_view data = "") {
  return absl::StrCat(LengthPrefix(header.size()), header, data);
}

void WriteBytes(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), bytes.size());
  ASSERT_TRUE(out.good()) << path;
}

// Writes `bytes` to this test's file and opens it; `*path` receives the file name.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenImage(absl::string_view bytes, std::string* path = nullptr) {
  const std::string p = TestPath(".safetensors");
  WriteBytes(p, bytes);
  if (path != nullptr) *path = p;
  return SafetensorsFile::Open(p);
}

// Asserts that opening `bytes` fails with INVALID_ARGUMENT whose message names the file and contains each of
// `substrings`.
void ExpectInvalid(absl::string_view bytes, const std::vector<std::string>& substrings) {
  std::string path;
  auto file = OpenImage(bytes, &path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(file.status().message(), HasSubstr(path));
  for (const std::string& s : substrings) EXPECT_THAT(file.status().message(), HasSubstr(s));
}

constexpr char kW[] = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
constexpr char kHeaderW[] = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

// ---------------------------------------------------------------------------------------------------------
// Valid files.

TEST(SafetensorsFileTest, ReadsTensorsInHeaderOrder) {
  const std::string header =
      R"({"b":{"dtype":"I32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"U8","shape":[],"data_offsets":[0,1]},)"
      R"("c":{"dtype":"BF16","shape":[1,0,5],"data_offsets":[12,12]},)"
      R"("d":{"dtype":"U8","shape":[3],"data_offsets":[1,4]}})";
  const std::string data("\x07xyz\x01\0\0\0\x02\0\0\0", 12);
  std::string path;
  auto file = OpenImage(Image(header, data), &path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "b");
  EXPECT_EQ(f.tensors()[1].name, "a");
  EXPECT_EQ(f.tensors()[2].name, "c");
  EXPECT_EQ(f.tensors()[3].name, "d");

  const TensorInfo* b = f.Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kI32);
  EXPECT_THAT(b->shape, ElementsAre(2));
  EXPECT_EQ(b->nbytes, 8u);
  int32_t values[2];
  std::memcpy(values, b->data, 8);  // Unaligned: the header is not padded.
  EXPECT_EQ(values[0], 1);
  EXPECT_EQ(values[1], 2);

  const TensorInfo* a = f.Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->shape.empty());
  EXPECT_EQ(a->num_elements(), 1);
  EXPECT_EQ(a->data[0], 7);

  const TensorInfo* c = f.Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->num_elements(), 0);
  EXPECT_EQ(c->nbytes, 0u);

  EXPECT_EQ(f.Find("e"), nullptr);
  EXPECT_EQ(f.Find("__metadata__"), nullptr);
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.data_region().size(), 12u);
}

TEST(SafetensorsFileTest, MovedFileKeepsItsTensors) {
  auto file = OpenImage(Image(kHeaderW, "\x01\x02\x03\x04\x05\x06\x07\x08"));
  ASSERT_TRUE(file.ok()) << file.status();
  const uint8_t* data = (*file)->Find("w")->data;
  SafetensorsFile moved = std::move(**file);
  file->reset();
  ASSERT_NE(moved.Find("w"), nullptr);
  EXPECT_EQ(moved.Find("w")->data, data);
  EXPECT_EQ(moved.Find("w")->data[7], 8);
}

TEST(SafetensorsFileTest, EmptyHeaderAndDataRegionIsValid) {
  auto file = OpenImage(Image("{}"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->data_region().empty());
}

TEST(SafetensorsFileTest, PaddedHeaderMetadataAndUnknownFieldsAreAccepted) {
  auto file = OpenImage(Image(
      absl::StrCat(R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],)",
                   R"("extension":{"nested":[1,[2]]}}}    )"),
      std::string(8, 'x')));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  ASSERT_EQ((*file)->tensors().size(), 1u);
}

TEST(SafetensorsFileTest, NullMetadataMeansNone) {
  auto file = OpenImage(Image(R"({"__metadata__":null})"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  const std::string path = TestPath(".absent");
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path), HasSubstr("No such file")));
}

TEST(SafetensorsFileTest, DirectoryIsInvalidArgument) {
  auto file = SafetensorsFile::Open(::testing::TempDir());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

// ---------------------------------------------------------------------------------------------------------
// Hostile files: one test per check.

TEST(SafetensorsHostileTest, ShorterThanLengthField) {
  for (size_t n = 0; n < 8; ++n) ExpectInvalid(std::string(n, '\x01'), {absl::StrCat("file is ", n, " bytes")});
}

TEST(SafetensorsHostileTest, HeaderLengthPastEndOfFile) {
  ExpectInvalid(LengthPrefix(100) + "{}", {"header length 100", "exceeds the 2 bytes"});
}

TEST(SafetensorsHostileTest, HeaderLengthOverLimit) {
  ExpectInvalid(LengthPrefix(kMaxSafetensorsHeaderBytes + 1) + "{}", {"header length 16777217", "limit"});
  ExpectInvalid(LengthPrefix(~uint64_t{0}) + "{}", {"header length 18446744073709551615"});
}

TEST(SafetensorsHostileTest, HeaderNotJson) {
  ExpectInvalid(Image(R"({"w":{"dtype":)"), {"not valid JSON"});
  ExpectInvalid(Image(""), {"not valid JSON"});
  ExpectInvalid(Image("{\"\xff\xfe\":{}}"), {"not valid JSON"});  // Not UTF-8.
  // nlohmann stops at a NUL as if the input ended, which would hide whatever follows it.
  ExpectInvalid(Image(std::string("{}\0{\"w\":1}", 10)), {"NUL byte at offset 2"});
}

TEST(SafetensorsHostileTest, HeaderNotObject) {
  ExpectInvalid(Image("[1,2]"), {"[1,2]", "not an object"});
  ExpectInvalid(Image("\"str\""), {"not an object"});
}

TEST(SafetensorsHostileTest, HeaderNestsTooDeep) {
  ExpectInvalid(Image(absl::StrCat(R"({"x":)", std::string(100000, '['), std::string(100000, ']'), "}")),
                {"nests deeper"});
}

TEST(SafetensorsHostileTest, EntryNotObject) {
  ExpectInvalid(Image(R"({"w":5})"), {"tensor \"w\"", "entry is 5"});
  ExpectInvalid(Image(R"({"w":[0,8]})"), {"tensor \"w\"", "[0,8]"});
}

TEST(SafetensorsHostileTest, EntryLacksField) {
  ExpectInvalid(Image(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", "12345678"), {"tensor \"w\"", "no \"dtype\""});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", "12345678"), {"tensor \"w\"", "no \"shape\""});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2]}})", "12345678"), {"tensor \"w\"", "no \"data_offsets\""});
}

TEST(SafetensorsHostileTest, EntryFieldsOfWrongJsonType) {
  const std::string data(8, 'x');
  ExpectInvalid(Image(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", data), {"tensor \"w\"", "dtype is 4"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", data),
                {"tensor \"w\"", "shape is \"2\""});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data),
                {"tensor \"w\"", "dim 2.0"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", data),
                {"tensor \"w\"", "dim [2]"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}})", data),
                {"tensor \"w\"", "data_offsets \"0,8\""});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", data),
                {"tensor \"w\"", "data_offsets [8]"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", data),
                {"tensor \"w\"", "data_offsets [0,8,8]"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})", data),
                {"tensor \"w\"", R"(data_offsets ["0","8"])"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", data),
                {"tensor \"w\"", "data_offsets [0,8.5]"});
}

TEST(SafetensorsHostileTest, UnknownDtype) {
  ExpectInvalid(Image(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, 'x')),
                {"tensor \"w\"", "unsupported dtype \"F64\""});
}

TEST(SafetensorsHostileTest, NegativeDim) {
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", std::string(8, 'x')),
                {"tensor \"w\"", "dim -1"});
}

TEST(SafetensorsHostileTest, DimBeyondInt64) {
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]}})"),
                {"tensor \"w\"", "dim 9223372036854775808"});
  // Beyond uint64: nlohmann stores it as a float.
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,8]}})"),
                {"tensor \"w\"", "dim 1e+20"});
}

TEST(SafetensorsHostileTest, ElementCountOverflow) {
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
                {"tensor \"w\"", "[4294967296,4294967296]", "more than 2^63 elements"});
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[3037000500,3037000500],"data_offsets":[0,0]}})"),
                {"tensor \"w\"", "more than 2^63 elements"});
  // 2^62 elements of 4 bytes = 2^64 bytes.
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                {"tensor \"w\"", "overflows 2^64 bytes"});
}

TEST(SafetensorsHostileTest, NegativeOffset) {
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-1,3]}})", "1234"),
                {"tensor \"w\"", "[-1,3]", "non-negative"});
}

TEST(SafetensorsHostileTest, BeginAfterEnd) {
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}})", "12345678"),
                {"tensor \"w\"", "begin 8 > end 4"});
}

TEST(SafetensorsHostileTest, EndPastDataRegion) {
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", "12345678"),
                {"tensor \"w\"", "end 16", "data region of 8 bytes"});
  ExpectInvalid(Image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})"),
                {"tensor \"w\"", "end 18446744073709551615"});
}

TEST(SafetensorsHostileTest, ByteLengthDisagreesWithShape) {
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "1234"),
                {"tensor \"w\"", "span 4 bytes", "needs 8"});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,4]}})", "1234"),
                {"tensor \"w\"", "span 4 bytes", "needs 0"});
}

TEST(SafetensorsHostileTest, OverlappingTensors) {
  ExpectInvalid(Image(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
                      "123456789abc"),
                {"tensor \"b\"", "overlaps tensor \"a\""});
  // The same range twice (a copy-paste header) overlaps too.
  ExpectInvalid(Image(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
                      "12345678"),
                {"overlaps tensor \"a\""});
  // A zero-size tensor inside another.
  ExpectInvalid(Image(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                      R"("z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
                      "12345678"),
                {"tensor \"z\"", "overlaps tensor \"a\""});
}

TEST(SafetensorsHostileTest, HoleInDataRegion) {
  ExpectInvalid(Image(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
                      "123456789abc"),
                {"hole [4, 8)", "tensor \"b\""});
  ExpectInvalid(Image(R"({"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", "12345678"), {"hole [0, 4)"});
}

TEST(SafetensorsHostileTest, TrailingBytesAfterLastTensor) {
  ExpectInvalid(Image(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "12345678"),
                {"4 bytes after the last tensor"});
  ExpectInvalid(Image("{}", "x"), {"1 bytes after the last tensor"});
}

TEST(SafetensorsHostileTest, DuplicateNames) {
  ExpectInvalid(Image(absl::StrCat("{", kW, ",", kW, "}"), "12345678"), {"duplicate JSON key \"w\""});
  ExpectInvalid(Image(R"({"w":{"dtype":"F32","dtype":"U8","shape":[8],"data_offsets":[0,8]}})", "12345678"),
                {"duplicate JSON key \"dtype\""});
  ExpectInvalid(Image(R"({"__metadata__":{"k":"1","k":"2"}})"), {"duplicate JSON key \"k\""});
}

TEST(SafetensorsHostileTest, MetadataValueNotString) {
  ExpectInvalid(Image(R"({"__metadata__":{"k":5}})"), {"__metadata__ value of \"k\" is 5"});
  ExpectInvalid(Image(R"({"__metadata__":{"k":{"x":"y"}}})"), {"\"k\"", "{\"x\":\"y\"}"});
  ExpectInvalid(Image(R"({"__metadata__":["a"]})"), {"__metadata__ is [\"a\"]"});
}

TEST(SafetensorsHostileTest, LongValuesAreCutShortInMessages) {
  const std::string name(10000, 'n');
  std::string path;
  auto file = OpenImage(Image(absl::StrCat(R"({")", name, R"(":7})")), &path);
  ASSERT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("(10000 bytes)"));
  EXPECT_LT(file.status().message().size(), 400u);
}

// ---------------------------------------------------------------------------------------------------------
// Mutation fuzzing: every mutated file must either open with all tensors inside the data region, or be
// rejected with INVALID_ARGUMENT.

struct FuzzCounts {
  int ok = 0;
  int invalid = 0;
};

void CheckOpenable(const std::string& path, const std::string& bytes, const std::string& what, FuzzCounts* counts) {
  WriteBytes(path, bytes);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    ASSERT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << what << ": " << file.status();
    ++counts->invalid;
    return;
  }
  ++counts->ok;
  const SafetensorsFile& f = **file;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_EQ(f.data_region().size(), bytes.size() - 8 - header_len) << what;
  const uint8_t* begin = f.data_region().data();
  const uint8_t* end = begin + f.data_region().size();
  size_t covered = 0;
  for (const TensorInfo& t : f.tensors()) {
    ASSERT_EQ(t.nbytes, static_cast<size_t>(t.num_elements()) * DTypeSize(t.dtype)) << what << " " << t.name;
    ASSERT_TRUE(t.data >= begin && t.data <= end && t.nbytes <= static_cast<size_t>(end - t.data))
        << what << " " << t.name;
    ASSERT_EQ(std::memcmp(t.data, bytes.data() + 8 + header_len + (t.data - begin), t.nbytes), 0) << what;
    ASSERT_EQ(f.Find(t.name), &t) << what;
    covered += t.nbytes;
  }
  ASSERT_EQ(covered, f.data_region().size()) << what;
}

TEST(SafetensorsFuzzTest, MutatedFilesOpenSafelyOrFailWithInvalidArgument) {
  const std::string path = TestPath(".safetensors");
  std::string data(4 * 6 + 2 * 3 + 1 + 8 * 2, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 37 + 11);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]},)"
      R"("c":{"dtype":"U8","shape":[],"data_offsets":[30,31]},)"
      R"("z":{"dtype":"I32","shape":[0,7],"data_offsets":[31,31]},)"
      R"("d":{"dtype":"I64","shape":[2,1],"data_offsets":[31,47]}})";
  const std::string valid = Image(header, data);
  {
    auto file = SafetensorsFile::Open((WriteBytes(path, valid), path));
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_EQ((*file)->tensors().size(), 5u);
  }

  std::mt19937_64 rng(20240607);
  auto uniform = [&rng](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  const std::string interesting = "{}[]\":,-0123456789e.Ft \\";

  FuzzCounts counts;
  // Truncation at every length.
  for (size_t len = 0; len < valid.size(); ++len) {
    CheckOpenable(path, valid.substr(0, len), absl::StrCat("truncated to ", len), &counts);
  }
  // Byte edits inside the header.
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(uniform(3));
    for (int e = 0; e < edits; ++e) {
      const size_t pos = 8 + uniform(header.size());
      switch (uniform(3)) {
        case 0: bytes[pos] ^= static_cast<char>(1 << uniform(8)); break;
        case 1: bytes[pos] = interesting[uniform(interesting.size())]; break;
        default: bytes[pos] = static_cast<char>(uniform(256)); break;
      }
    }
    CheckOpenable(path, bytes, absl::StrCat("header edit round ", round), &counts);
  }
  // Rewrites of the header length field.
  for (int round = 0; round < 1000; ++round) {
    uint64_t n;
    switch (uniform(4)) {
      case 0: n = header.size() + uniform(17) - 8; break;
      case 1: n = uniform(valid.size() + 16); break;
      case 2: n = rng(); break;
      default: n = uint64_t{1} << uniform(64); break;
    }
    CheckOpenable(path, LengthPrefix(n) + valid.substr(8), absl::StrCat("header length ", n), &counts);
  }
  // Both outcomes occur (edits of digits and names keep some files valid), so both paths were checked.
  EXPECT_GT(counts.ok, 50);
  EXPECT_GT(counts.invalid, 1000);
}

// ---------------------------------------------------------------------------------------------------------
// Model directories.

class SafetensorsSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TestPath("");
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0) << dir_;
    a_ = {1, 2, 3, 4};
    b_ = {5, 6};
  }

  // Writes shard-1.safetensors with "a" and shard-2.safetensors with "b", and `index` as the index.
  void WriteShardsAndIndex(absl::string_view index) {
    ASSERT_TRUE(WriteSafetensors(dir_ + "/shard-1.safetensors", {{"a", DType::kU8, {4}, a_}}).ok());
    ASSERT_TRUE(WriteSafetensors(dir_ + "/shard-2.safetensors", {{"b", DType::kU8, {2}, b_}}).ok());
    WriteBytes(dir_ + "/model.safetensors.index.json", index);
  }

  std::string dir_;
  std::vector<uint8_t> a_, b_;
};

constexpr char kGoodIndex[] =
    R"({"metadata":{"total_size":6},"weight_map":{"a":"shard-1.safetensors","b":"shard-2.safetensors"}})";

TEST_F(SafetensorsSetTest, OpensShardsThroughIndex) {
  WriteShardsAndIndex(kGoodIndex);
  auto set = SafetensorsSet::OpenDir(dir_);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT((*set)->names(), ElementsAre("a", "b"));
  EXPECT_TRUE((*set)->Has("b"));
  auto b = (*set)->Get("b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->data[1], 6);
}

TEST_F(SafetensorsSetTest, MissingTensorNamesTensorAndDirectory) {
  WriteShardsAndIndex(kGoodIndex);
  auto set = SafetensorsSet::OpenDir(dir_);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_FALSE((*set)->Has("lm_head.weight"));
  auto t = (*set)->Get("lm_head.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), AllOf(HasSubstr("\"lm_head.weight\""), HasSubstr(dir_)));
}

TEST_F(SafetensorsSetTest, MissingDirectoryIsNotFound) {
  auto set = SafetensorsSet::OpenDir(dir_ + "/nope");
  EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(set.status().message(), HasSubstr(dir_ + "/nope"));
}

TEST_F(SafetensorsSetTest, DirectoryWithoutWeightsIsNotFound) {
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(set.status().message(), HasSubstr(dir_ + "/model.safetensors"));
}

TEST_F(SafetensorsSetTest, GarbledIndex) {
  WriteShardsAndIndex(R"({"weight_map":{"a":)");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("not valid JSON")));
}

TEST_F(SafetensorsSetTest, IndexNotObjectOrWithoutWeightMap) {
  for (const char* index : {"[]", R"({"metadata":{}})"}) {
    WriteShardsAndIndex(index);
    auto set = SafetensorsSet::OpenDir(dir_);
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << index;
    EXPECT_THAT(set.status().message(), HasSubstr("model.safetensors.index.json")) << index;
  }
}

TEST_F(SafetensorsSetTest, WeightMapNotObject) {
  WriteShardsAndIndex(R"({"weight_map":["a","shard-1.safetensors"]})");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("weight_map is [\"a\",\"shard-1.safetensors\"], not an object"));
}

TEST_F(SafetensorsSetTest, WeightMapValueNotString) {
  WriteShardsAndIndex(R"({"weight_map":{"a":1}})");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("tensor \"a\" is 1, not a string"));
}

TEST_F(SafetensorsSetTest, ShardNameEscapingTheDirectory) {
  // JSON string literals of shard names; the last has a NUL that would truncate the path given to open().
  for (const char* shard : {"../shard-1.safetensors", "/etc/passwd", "sub/shard-1.safetensors", "..", ".", "",
                            R"(a\\b)", R"(shard-1.safetensors\u0000x)"}) {
    WriteShardsAndIndex(absl::StrCat(R"({"weight_map":{"a":")", shard, R"("}})"));
    auto set = SafetensorsSet::OpenDir(dir_);
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << shard;
    EXPECT_THAT(set.status().message(), AllOf(HasSubstr("tensor \"a\""), HasSubstr("not a plain file name")))
        << shard;
  }
}

TEST_F(SafetensorsSetTest, MissingShard) {
  WriteShardsAndIndex(R"({"weight_map":{"a":"shard-1.safetensors","c":"shard-3.safetensors"}})");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(),
              AllOf(HasSubstr("shard \"shard-3.safetensors\""), HasSubstr("tensor \"c\""), HasSubstr("missing")));
}

TEST_F(SafetensorsSetTest, TensorAbsentFromItsShard) {
  WriteShardsAndIndex(R"({"weight_map":{"a":"shard-2.safetensors"}})");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(),
              AllOf(HasSubstr("tensor \"a\""), HasSubstr(dir_ + "/shard-2.safetensors"), HasSubstr("does not contain")));
}

TEST_F(SafetensorsSetTest, CorruptShardReportsTheShard) {
  WriteShardsAndIndex(kGoodIndex);
  WriteBytes(dir_ + "/shard-2.safetensors", "short");
  auto set = SafetensorsSet::OpenDir(dir_);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr(dir_ + "/shard-2.safetensors"));
}

}  // namespace
}  // namespace livekv
