// File: engine/presets.h
//
// Named model shapes: the embedded tiny model of the demo and tests, a ~100M-parameter model for CPU
// benchmarks, and the Llama-3-8B shape for GPU performance work with dummy weights.
#ifndef LIVEKV_ENGINE_PRESETS_H_
#define LIVEKV_ENGINE_PRESETS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace livekv {

// "tiny": byte vocabulary (259), 4 layers, hidden 128, 4/2 heads of 32, 131072 positions.
// "small-100m": 32000 vocabulary, 12 layers, hidden 768, 12/4 heads of 64 (~100M parameters).
// "llama3-8b": Llama-3-8B (32 layers, hidden 4096, 32/8 heads of 128, FFN 14336, vocabulary 128256).
// INVALID_ARGUMENT naming the preset when unknown.
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

std::vector<std::string> PresetNames();

}  // namespace livekv

#endif  // LIVEKV_ENGINE_PRESETS_H_
