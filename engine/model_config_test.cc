#include "engine/model_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

constexpr char kLlama3[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": false, "attention_bias": false, "hidden_act": "silu",
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"})";

TEST(ModelConfigTest, ParsesLlama31) {
  auto c = ParseModelConfig(kLlama3, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->group_size(), 4);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->KvBytesPerToken(2), 131072);
  // Llama-3-8B has 8.03e9 parameters.
  EXPECT_NEAR(static_cast<double>(c->NumParameters()), 8.03e9, 0.01e9);
}

TEST(ModelConfigTest, Qwen2AlwaysHasQkvBias) {
  auto c = ParseModelConfig(R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "rope_theta": 1000000.0, "tie_word_embeddings": true, "use_sliding_window": false})",
                            "q.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->head_dim, 16);
}

TEST(ModelConfigTest, ReadsRopeParametersOfNewerTransformers) {
  auto c = ParseModelConfig(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
      "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}})",
                            "c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 123.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ModelConfigTest, RoundTripsThroughJson) {
  auto c = ParseModelConfig(kLlama3, "config.json");
  ASSERT_TRUE(c.ok());
  auto again = ParseModelConfig(c->ToJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToJson(), c->ToJson());
}

struct BadCase {
  const char* json;
  const char* expect;
};

class BadConfigTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfigTest, IsInvalidArgumentNamingTheField) {
  auto c = ParseModelConfig(GetParam().json, "dir/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("dir/config.json"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(GetParam().expect));
}

#define BASE R"("vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2)"
INSTANTIATE_TEST_SUITE_P(
    All, BadConfigTest,
    ::testing::Values(
        BadCase{"{not json", "not valid JSON"}, BadCase{"[1,2]", "JSON object"},
        BadCase{R"({"architectures": ["GPT2LMHeadModel"]})", "GPT2LMHeadModel"},
        BadCase{R"({"architectures": "llama"})", "architectures"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100})", "hidden_size"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": "4"})",
                "num_attention_heads"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "num_key_value_heads": 3})",
                "num_key_value_heads (3)"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 0})",
                "num_attention_heads must be positive, saw 0"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})",
                "yarn"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})",
                "rope_scaling.low_freq_factor"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "hidden_act": "gelu"})",
                "hidden_act"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "eos_token_id": 100})",
                "eos_token_id 100"},
        BadCase{R"({"architectures": ["LlamaForCausalLM"], )" BASE R"(, "num_attention_heads": 4,
                "eos_token_id": "x"})",
                "eos_token_id"}));

TEST(ModelConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadModelConfig("/nonexistent-dir").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace livekv
