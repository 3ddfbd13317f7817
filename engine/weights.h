// File: engine/weights.h
//
// The weights of a Llama/Qwen2/Mistral model in a backend's memory, in the layout the transformer uses:
// q/k/v projections fused into one matrix (and bias), gate/up projections fused into one matrix. Loaded from
// Hugging Face safetensors (any of F32/BF16/F16, converted to the backend's weight dtype) or generated from a
// seed ("dummy weights") for tests and for performance work at real sizes without weight files.
#ifndef LIVEKV_ENGINE_WEIGHTS_H_
#define LIVEKV_ENGINE_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/safetensors/safetensors.h"
#include "engine/tensor.h"

namespace livekv {

struct LayerWeights {
  Tensor attn_norm;  // [hidden]
  Tensor wqkv;       // [(Hq + 2 Hkv) * D][hidden]: q_proj, k_proj, v_proj rows
  Tensor bqkv;       // [(Hq + 2 Hkv) * D], empty without attention bias
  Tensor wo;         // [hidden][Hq * D]
  Tensor bo;         // [hidden], empty without an output bias
  Tensor mlp_norm;   // [hidden]
  Tensor w_gate_up;  // [2 * intermediate][hidden]: gate_proj rows then up_proj rows
  Tensor w_down;     // [hidden][intermediate]
};

struct ModelWeights {
  Tensor embed;  // [vocab][hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab][hidden]; empty when tied to embed

  const Tensor& output() const { return lm_head.empty() ? embed : lm_head; }
  size_t nbytes() const;
};

// One tensor of the Hugging Face checkpoint layout.
struct HfTensorSpec {
  std::string name;  // e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  bool is_norm = false;  // RMSNorm weights (initialised to 1 in dummy weights)
};

// Every tensor a checkpoint of `config` holds, in a fixed order.
std::vector<HfTensorSpec> HfTensorSpecs(const ModelConfig& config);

// Loads and converts every tensor. INVALID_ARGUMENT naming the tensor (and file) when one is missing, has the
// wrong shape, or an unsupported dtype.
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const SafetensorsSet& files, Backend* backend);

// Deterministic pseudo-random weights: linear weights uniform with standard deviation `stddev`, norms 1. The same
// (config, seed) gives the same weights on every backend and machine, and DummyHfTensor writes exactly what
// DummyWeights loads.
absl::StatusOr<ModelWeights> DummyWeights(const ModelConfig& config, uint64_t seed, Backend* backend,
                                          float stddev = 0.02f);

// The fp32 values of one tensor of the dummy checkpoint (index into HfTensorSpecs).
std::vector<float> DummyHfTensor(const ModelConfig& config, uint64_t seed, size_t spec_index, float stddev = 0.02f);

// For loaders that fill the weights themselves (the CUDA backend's device-side dummy fill): allocates the fused
// layout of `config` in `backend`'s memory (its weight dtype) into `weights` and returns, for each tensor of
// HfTensorSpecs(config) in order, the view it fills (a row range of a fused tensor, or a whole tensor).
absl::StatusOr<std::vector<TensorView>> AllocateWeightLayout(const ModelConfig& config, Backend* backend,
                                                             ModelWeights* weights);

// The generator DummyHfTensor uses for tensor `spec_index`: element i is derived from SplitMix64(stream + i) as
// u = (bits >> 11) * 2^-53 (a double in [0, 1)), value = float((2u - 1) * a) with a = float(stddev * sqrt(3.0f)).
uint64_t DummyTensorStream(uint64_t seed, size_t spec_index);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_WEIGHTS_H_
