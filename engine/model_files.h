// File: engine/model_files.h
//
// A model directory in Hugging Face layout (config.json, *.safetensors, tokenizer files), loaded into a backend
// in one call, and written from a config with dummy weights (the embedded tiny model, test models).
#ifndef LIVEKV_ENGINE_MODEL_FILES_H_
#define LIVEKV_ENGINE_MODEL_FILES_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/transformer.h"

namespace livekv {

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Transformer> transformer;
};

// Reads config.json, the safetensors weights and the tokenizer of `dir` into `backend`. Errors name the file:
// NOT_FOUND for a missing directory or file, INVALID_ARGUMENT for a malformed or inconsistent one (including a
// tokenizer whose vocabulary is larger than the model's).
absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, Backend* backend,
                                      const TransformerOptions& options = {});

// Writes `dir`/config.json, model.safetensors (weights from DummyHfTensor(config, seed) in `dtype`: F32 or BF16)
// and livekv_tokenizer.json selecting the byte tokenizer. REQUIRES: config.vocab_size >= 259 (the byte
// tokenizer's vocabulary). Files are written atomically; `dir` is created if needed.
absl::Status WriteDummyModel(const std::string& dir, const ModelConfig& config, uint64_t seed, DType dtype);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_MODEL_FILES_H_
