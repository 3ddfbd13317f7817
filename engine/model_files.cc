#include "engine/model_files.h"

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "engine/safetensors/safetensors.h"
#include "engine/safetensors/safetensors_writer.h"
#include "engine/tokenizer/tokenizer_loader.h"
#include "engine/weights.h"

namespace livekv {

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, Backend* backend, const TransformerOptions& options) {
  LoadedModel m;
  LIVEKV_ASSIGN_OR_RETURN(m.config, LoadModelConfig(dir));
  LIVEKV_ASSIGN_OR_RETURN(m.tokenizer, LoadTokenizer(dir));
  if (m.tokenizer->vocab_size() > m.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": the tokenizer has ", m.tokenizer->vocab_size(),
                                                   " tokens but config.json's vocab_size is ", m.config.vocab_size));
  }
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsSet> files, SafetensorsSet::OpenDir(dir));
  LIVEKV_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(m.config, *files, backend));
  LIVEKV_ASSIGN_OR_RETURN(m.transformer, Transformer::Create(m.config, std::move(weights), backend, options));
  return m;
}

absl::Status WriteDummyModel(const std::string& dir, const ModelConfig& config, uint64_t seed, DType dtype) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("dummy model dtype must be F32 or BF16, saw ", DTypeName(dtype)));
  }
  if (config.vocab_size < 259) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a dummy model uses the byte tokenizer and needs vocab_size >= 259, saw ", config.vocab_size));
  }
  LIVEKV_RETURN_IF_ERROR(MakeDirectories(dir));
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  std::vector<std::vector<uint8_t>> storage(specs.size());
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::vector<float> values = DummyHfTensor(config, seed, i);
    storage[i].resize(values.size() * DTypeSize(dtype));
    ConvertFromF32(values.data(), values.size(), dtype, storage[i].data());
    tensors.push_back({specs[i].name, dtype, specs[i].shape, storage[i]});
  }
  LIVEKV_RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, "model.safetensors"), tensors,
                                          {{"format", "pt"}, {"livekv_dummy_seed", absl::StrCat(seed)}}));
  LIVEKV_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, "livekv_tokenizer.json"), "{\"type\": \"byte\"}\n"));
  // config.json last: a directory with a config is a complete model.
  return WriteFileAtomically(JoinPath(dir, "config.json"), config.ToJson());
}

}  // namespace livekv
