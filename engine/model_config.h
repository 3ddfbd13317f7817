// File: engine/model_config.h
//
// The shape of a decoder-only transformer of the Llama / Qwen2 / Mistral family, read from a Hugging Face
// `config.json`.
//
//   LIVEKV_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig("/models/tiny"));
#ifndef LIVEKV_ENGINE_MODEL_CONFIG_H_
#define LIVEKV_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace livekv {

enum class Architecture { kLlama, kQwen2, kMistral };

// "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM".
absl::string_view ArchitectureName(Architecture a);

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  // llama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;    // q/k/v projections carry a bias (always true for Qwen2)
  bool output_bias = false;       // o_proj carries a bias (Llama/Mistral attention_bias; never Qwen2)
  int64_t sliding_window = 0;     // 0: none. Mistral's window in tokens.
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;       // -1: none

  int64_t group_size() const { return num_heads / num_kv_heads; }
  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters of the model (embeddings counted once when tied).
  int64_t NumParameters() const;
  // Bytes of K and V per token over all layers, for an element size of `elem_bytes`.
  int64_t KvBytesPerToken(int64_t elem_bytes) const { return 2 * num_layers * kv_dim() * elem_bytes; }

  // INVALID_ARGUMENT naming the field and the value when the shape is inconsistent (heads not dividing,
  // non-positive sizes, odd head_dim, ...).
  absl::Status Validate() const;

  // Serialises to a Hugging Face config.json that transformers can load.
  std::string ToJson() const;
};

// Parses config.json text. `source` names the file in error messages. Unsupported architectures and missing or
// mistyped fields are INVALID_ARGUMENT naming the field and the value seen.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);

// Reads `dir`/config.json: NOT_FOUND when absent, otherwise as ParseModelConfig.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_MODEL_CONFIG_H_
