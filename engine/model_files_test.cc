// Loading whole model directories, and the errors for broken ones.
#include "engine/model_files.h"

#include <cstdlib>
#include <fstream>

#include "common/file.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/presets.h"
#include "engine/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

class ModelFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = JoinPath(std::getenv("TEST_TMPDIR"), ::testing::UnitTest::GetInstance()->current_test_info()->name());
    dir_ = JoinPath(root_, "tiny");
    config_ = PresetConfig("tiny").value();
    config_.num_layers = 2;
    ASSERT_TRUE(WriteDummyModel(dir_, config_, /*seed=*/3, DType::kBF16).ok());
  }
  absl::Status Load() { return LoadModel(dir_, &backend_).status(); }
  void Overwrite(const std::string& name, const std::string& contents) {
    ASSERT_TRUE(WriteFileAtomically(JoinPath(dir_, name), contents).ok());
  }

  CpuBackend backend_{CpuBackendOptions{.num_threads = 1}};
  std::string root_, dir_;
  ModelConfig config_;
};

TEST_F(ModelFilesTest, WrittenModelLoadsAndMatchesDummyWeights) {
  absl::StatusOr<LoadedModel> m = LoadModel(dir_, &backend_);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.ToJson(), config_.ToJson());
  EXPECT_EQ(m->tokenizer->vocab_size(), 259);
  // The bf16 file holds the bf16-rounded dummy values.
  const std::vector<float> want = DummyHfTensor(config_, 3, 0);
  const float* embed = m->transformer->weights().embed.view().as<float>();
  for (int i : {0, 1, 1000, 259 * 128 - 1}) EXPECT_EQ(embed[i], BF16ToF32(F32ToBF16(want[i])));
}

TEST_F(ModelFilesTest, MissingDirectoryIsNotFound) {
  dir_ = JoinPath(root_, "nope");
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("nope/config.json"));
}

TEST_F(ModelFilesTest, GarbledConfigNamesTheFile) {
  Overwrite("config.json", "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": ");
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("config.json: not valid JSON"));
}

TEST_F(ModelFilesTest, UnsupportedArchitectureIsNamed) {
  Overwrite("config.json", "{\"architectures\": [\"GPTNeoXForCausalLM\"]}");
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("GPTNeoXForCausalLM"));
}

TEST_F(ModelFilesTest, TruncatedWeightsNameTheFile) {
  std::string bytes = ReadFileToString(JoinPath(dir_, "model.safetensors")).value();
  Overwrite("model.safetensors", bytes.substr(0, bytes.size() / 2));
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
}

TEST_F(ModelFilesTest, ConfigThatDisagreesWithTheWeightsIsRejected) {
  ModelConfig wider = config_;
  wider.intermediate_size += 2;
  Overwrite("config.json", wider.ToJson());
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("mlp.gate_proj.weight has shape [384, 128]"));

  ModelConfig fewer = config_;
  fewer.num_layers = 1;
  Overwrite("config.json", fewer.ToJson());
  s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.1."));
  EXPECT_THAT(std::string(s.message()), HasSubstr("not used by its config"));
}

TEST_F(ModelFilesTest, TokenizerLargerThanTheModelIsRejected) {
  ModelConfig small = config_;
  small.vocab_size = 200;
  small.eos_token_ids.clear();
  small.bos_token_id = -1;
  ASSERT_TRUE(WriteDummyModel(dir_, config_, 3, DType::kF32).ok());
  Overwrite("config.json", small.ToJson());
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("259 tokens"));
}

TEST_F(ModelFilesTest, MissingTokenizerIsNotFound) {
  ASSERT_EQ(std::remove(JoinPath(dir_, "livekv_tokenizer.json").c_str()), 0);
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace livekv
