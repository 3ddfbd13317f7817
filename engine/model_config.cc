#include "engine/model_config.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"

namespace livekv {
namespace {

using Json = nlohmann::json;

// Reads optional typed fields of a JSON object, turning type mismatches into INVALID_ARGUMENT that name the
// field, the value seen and the file.
class FieldReader {
 public:
  FieldReader(const Json& obj, absl::string_view source, absl::string_view prefix = "")
      : obj_(obj), source_(source), prefix_(prefix) {}

  bool Has(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

  absl::Status Int(const char* key, int64_t* out, bool required) const {
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_number_integer()) return Wrong(key, "an integer", v);
    *out = v.get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status Double(const char* key, double* out, bool required) const {
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_number()) return Wrong(key, "a number", v);
    *out = v.get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_boolean()) return Wrong(key, "a boolean", v);
    *out = v.get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* key, std::string* out, bool required) const {
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_string()) return Wrong(key, "a string", v);
    *out = v.get<std::string>();
    return absl::OkStatus();
  }

  absl::Status Missing(const char* key) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": missing field \"", prefix_, key, "\""));
  }

  absl::Status Wrong(const char* key, absl::string_view expected, const Json& seen) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", prefix_, key, "\" must be ", expected,
                                                   ", saw ", seen.dump()));
  }

  absl::Status Invalid(const char* key, absl::string_view why) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field \"", prefix_, key, "\" = ", obj_.at(key).dump(), ": ", why));
  }

 private:
  const Json& obj_;
  absl::string_view source_;
  absl::string_view prefix_;
};

// rope_scaling (transformers 4.x) and rope_parameters (5.x) carry the same keys.
absl::Status ParseRopeScaling(const Json& obj, absl::string_view source, absl::string_view name,
                              ModelConfig* config) {
  const std::string prefix = absl::StrCat(name, ".");
  FieldReader r(obj, source, prefix);
  std::string type;
  if (r.Has("rope_type")) {
    LIVEKV_RETURN_IF_ERROR(r.String("rope_type", &type, true));
  } else {
    LIVEKV_RETURN_IF_ERROR(r.String("type", &type, false));
  }
  LIVEKV_RETURN_IF_ERROR(r.Double("rope_theta", &config->rope_theta, false));
  RopeScaling& s = config->rope_scaling;
  if (type.empty() || type == "default") {
    s.type = RopeScaling::Type::kNone;
    return absl::OkStatus();
  }
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
    return r.Double("factor", &s.factor, true);
  }
  if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    LIVEKV_RETURN_IF_ERROR(r.Double("factor", &s.factor, true));
    LIVEKV_RETURN_IF_ERROR(r.Double("low_freq_factor", &s.low_freq_factor, true));
    LIVEKV_RETURN_IF_ERROR(r.Double("high_freq_factor", &s.high_freq_factor, true));
    LIVEKV_RETURN_IF_ERROR(
        r.Int("original_max_position_embeddings", &s.original_max_position_embeddings, true));
    if (s.high_freq_factor <= s.low_freq_factor) {
      return r.Invalid("high_freq_factor", "must be greater than low_freq_factor");
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported ", name, " type \"", type,
                                                 "\" (supported: default, linear, llama3)"));
}

absl::Status ParseTokenIds(const Json& obj, absl::string_view source, ModelConfig* config) {
  FieldReader r(obj, source);
  if (r.Has("bos_token_id")) {
    int64_t bos = 0;
    LIVEKV_RETURN_IF_ERROR(r.Int("bos_token_id", &bos, true));
    config->bos_token_id = static_cast<int32_t>(bos);
  }
  if (r.Has("eos_token_id")) {
    const Json& eos = obj.at("eos_token_id");
    if (eos.is_number_integer()) {
      config->eos_token_ids.push_back(eos.get<int32_t>());
    } else if (eos.is_array()) {
      for (const Json& e : eos) {
        if (!e.is_number_integer()) return r.Wrong("eos_token_id", "an integer or a list of integers", eos);
        config->eos_token_ids.push_back(e.get<int32_t>());
      }
    } else {
      return r.Wrong("eos_token_id", "an integer or a list of integers", eos);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLlama: return "LlamaForCausalLM";
    case Architecture::kQwen2: return "Qwen2ForCausalLM";
    case Architecture::kMistral: return "MistralForCausalLM";
  }
  return "?";
}

int64_t ModelConfig::NumParameters() const {
  const int64_t attn = hidden_size * q_dim() + 2 * hidden_size * kv_dim() + q_dim() * hidden_size +
                       (attention_bias ? q_dim() + 2 * kv_dim() : 0) + (output_bias ? hidden_size : 0);
  const int64_t mlp = 3 * hidden_size * intermediate_size;
  const int64_t per_layer = attn + mlp + 2 * hidden_size;
  const int64_t embed = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_layers * per_layer + embed + hidden_size;
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("model config: ", name, " must be positive, saw ", v));
  };
  LIVEKV_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  LIVEKV_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  LIVEKV_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  LIVEKV_RETURN_IF_ERROR(positive("num_hidden_layers", num_layers));
  LIVEKV_RETURN_IF_ERROR(positive("num_attention_heads", num_heads));
  LIVEKV_RETURN_IF_ERROR(positive("num_key_value_heads", num_kv_heads));
  LIVEKV_RETURN_IF_ERROR(positive("head_dim", head_dim));
  LIVEKV_RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model config: num_attention_heads (", num_heads,
                                                   ") must be a multiple of num_key_value_heads (",
                                                   num_kv_heads, ")"));
  }
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_dim must be even for rotary embeddings, saw ", head_dim));
  }
  if (!(rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("model config: rope_theta must be positive, saw ", rope_theta));
  }
  if (!(rms_norm_eps > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rms_norm_eps must be positive, saw ", rms_norm_eps));
  }
  if (rope_scaling.type != RopeScaling::Type::kNone && !(rope_scaling.factor >= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rope_scaling.factor must be >= 1, saw ", rope_scaling.factor));
  }
  if (sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: sliding_window must be >= 0, saw ", sliding_window));
  }
  for (int32_t eos : eos_token_ids) {
    if (eos < 0 || eos >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: eos_token_id ", eos, " is outside the vocabulary of ", vocab_size));
    }
  }
  if (bos_token_id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: bos_token_id ", bos_token_id, " is outside the vocabulary of ", vocab_size));
  }
  return absl::OkStatus();
}

std::string ModelConfig::ToJson() const {
  Json j;
  j["architectures"] = {std::string(ArchitectureName(architecture))};
  j["model_type"] = architecture == Architecture::kQwen2     ? "qwen2"
                    : architecture == Architecture::kMistral ? "mistral"
                                                             : "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (architecture != Architecture::kQwen2) j["attention_bias"] = attention_bias;
  if (architecture == Architecture::kMistral) {
    j["sliding_window"] = sliding_window > 0 ? Json(sliding_window) : Json(nullptr);
  }
  switch (rope_scaling.type) {
    case RopeScaling::Type::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Type::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
      break;
    case RopeScaling::Type::kLlama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", rope_scaling.factor},
                           {"low_freq_factor", rope_scaling.low_freq_factor},
                           {"high_freq_factor", rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
      break;
  }
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  j["torch_dtype"] = "float32";
  return j.dump(2) + "\n";
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  const Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": top level must be a JSON object"));
  FieldReader r(j, source);

  ModelConfig c;
  std::string arch;
  if (r.Has("architectures")) {
    const Json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string()) {
      return r.Wrong("architectures", "a non-empty list of strings", a);
    }
    arch = a[0].get<std::string>();
  } else {
    LIVEKV_RETURN_IF_ERROR(r.String("model_type", &arch, true));
  }
  if (arch == "LlamaForCausalLM" || arch == "llama") {
    c.architecture = Architecture::kLlama;
  } else if (arch == "Qwen2ForCausalLM" || arch == "qwen2") {
    c.architecture = Architecture::kQwen2;
  } else if (arch == "MistralForCausalLM" || arch == "mistral") {
    c.architecture = Architecture::kMistral;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": unsupported architecture \"", arch,
        "\" (supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"));
  }

  LIVEKV_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size, true));
  LIVEKV_RETURN_IF_ERROR(r.Int("hidden_size", &c.hidden_size, true));
  LIVEKV_RETURN_IF_ERROR(r.Int("intermediate_size", &c.intermediate_size, true));
  LIVEKV_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.num_layers, true));
  LIVEKV_RETURN_IF_ERROR(r.Int("num_attention_heads", &c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  LIVEKV_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c.num_kv_heads, false));
  if (c.num_heads > 0) c.head_dim = c.hidden_size / c.num_heads;
  LIVEKV_RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim, false));
  c.max_position_embeddings = 2048;
  LIVEKV_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.max_position_embeddings, false));
  LIVEKV_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps, false));
  LIVEKV_RETURN_IF_ERROR(r.Double("rope_theta", &c.rope_theta, false));
  LIVEKV_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.architecture == Architecture::kQwen2) {
    c.attention_bias = true;
    bool sliding = false;
    LIVEKV_RETURN_IF_ERROR(r.Bool("use_sliding_window", &sliding));
    if (sliding) return r.Invalid("use_sliding_window", "Qwen2 sliding-window layers are not supported");
  } else {
    LIVEKV_RETURN_IF_ERROR(r.Bool("attention_bias", &c.attention_bias));
    c.output_bias = c.attention_bias;
  }
  bool mlp_bias = false;
  LIVEKV_RETURN_IF_ERROR(r.Bool("mlp_bias", &mlp_bias));
  if (mlp_bias) return r.Invalid("mlp_bias", "MLP biases are not supported");
  std::string act = "silu";
  LIVEKV_RETURN_IF_ERROR(r.String("hidden_act", &act, false));
  if (act != "silu") return r.Invalid("hidden_act", "only silu (SwiGLU) is supported");
  if (c.architecture == Architecture::kMistral) {
    LIVEKV_RETURN_IF_ERROR(r.Int("sliding_window", &c.sliding_window, false));
  }
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.Has(key)) continue;
    if (!j.at(key).is_object()) return r.Wrong(key, "an object or null", j.at(key));
    LIVEKV_RETURN_IF_ERROR(ParseRopeScaling(j.at(key), source, key, &c));
  }
  LIVEKV_RETURN_IF_ERROR(ParseTokenIds(j, source, &c));

  absl::Status valid = c.Validate();
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, "config.json");
  LIVEKV_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 16 << 20));
  return ParseModelConfig(text, path);
}

}  // namespace livekv
