// File: engine/rope.h
//
// Rotary position embeddings as Hugging Face transformers computes them (rotate-half convention), including
// `linear` and `llama3` frequency scaling. The arithmetic is fp32 and mirrors transformers' order of operations
// so that logits agree to fp32 rounding.
#ifndef LIVEKV_ENGINE_ROPE_H_
#define LIVEKV_ENGINE_ROPE_H_

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace livekv {

struct RopeTable {
  int64_t head_dim = 0;
  std::vector<float> inv_freq;  // [head_dim / 2]

  // The angle of frequency i at `position`, rounded as transformers does: fp32(position) * inv_freq[i].
  float Angle(int64_t position, int64_t i) const { return static_cast<float>(position) * inv_freq[i]; }

  static RopeTable FromConfig(const ModelConfig& config);
};

// Applies the rotation in place to one head vector x[head_dim] at `position` (the CPU reference):
//   out[i] = x[i] cos(a_i) - x[i + D/2] sin(a_i),  out[i + D/2] = x[i + D/2] cos(a_i) + x[i] sin(a_i).
void ApplyRope(const RopeTable& rope, int64_t position, float* x);

// Undoes ApplyRope (rotation by -angle), for position-free keys (LiveVLM's retrieval).
void RemoveRope(const RopeTable& rope, int64_t position, float* x);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_ROPE_H_
