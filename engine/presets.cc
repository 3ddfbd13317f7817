#include "engine/presets.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace livekv {

std::vector<std::string> PresetNames() { return {"tiny", "small-100m", "llama3-8b"}; }

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.rms_norm_eps = 1e-5;
  if (name == "tiny") {
    c.vocab_size = 259;  // ByteTokenizer: 256 bytes + <|bos|> <|eos|> <|pad|>
    c.hidden_size = 128;
    c.intermediate_size = 384;
    c.num_layers = 4;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c.max_position_embeddings = 131072;
    c.rope_theta = 1e6;
    c.tie_word_embeddings = true;
    c.bos_token_id = 256;
    c.eos_token_ids = {257};
  } else if (name == "small-100m") {
    c.vocab_size = 32000;
    c.hidden_size = 768;
    c.intermediate_size = 2048;
    c.num_layers = 12;
    c.num_heads = 12;
    c.num_kv_heads = 4;
    c.head_dim = 64;
    c.max_position_embeddings = 32768;
    c.rope_theta = 1e4;
    c.tie_word_embeddings = false;
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
  } else if (name == "llama3-8b") {
    c.vocab_size = 128256;
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.max_position_embeddings = 131072;
    c.rope_theta = 500000.0;
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128009};
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown model preset \"", name,
                                                   "\" (known: ", absl::StrJoin(PresetNames(), ", "), ")"));
  }
  return c;
}

}  // namespace livekv
