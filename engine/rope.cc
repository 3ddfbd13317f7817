#include "engine/rope.h"

#include <cmath>

namespace livekv {

RopeTable RopeTable::FromConfig(const ModelConfig& config) {
  RopeTable t;
  t.head_dim = config.head_dim;
  const int64_t half = config.head_dim / 2;
  t.inv_freq.resize(half);
  const float base = static_cast<float>(config.rope_theta);
  for (int64_t i = 0; i < half; ++i) {
    // transformers: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in fp32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config.head_dim);
    t.inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  switch (s.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (float& f : t.inv_freq) f = f / static_cast<float>(s.factor);
      break;
    case RopeScaling::Type::kLlama3: {
      // transformers' _compute_llama3_parameters: python-float wavelength bounds, fp32 tensors elsewhere.
      const double old_len = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / s.low_freq_factor;
      const double high_freq_wavelen = old_len / s.high_freq_factor;
      const float factor = static_cast<float>(s.factor);
      for (float& f : t.inv_freq) {
        const float wavelen = static_cast<float>(2 * M_PI) / f;
        float scaled = wavelen > low_freq_wavelen ? f / factor : f;
        const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
          const float smooth = (static_cast<float>(old_len) / wavelen - static_cast<float>(s.low_freq_factor)) /
                               static_cast<float>(s.high_freq_factor - s.low_freq_factor);
          scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        f = scaled;
      }
      break;
    }
  }
  return t;
}

void ApplyRope(const RopeTable& rope, int64_t position, float* x) {
  const int64_t half = rope.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = rope.Angle(position, i);
    const float c = std::cos(a), s = std::sin(a);
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x1 * c + x0 * s;
  }
}

void RemoveRope(const RopeTable& rope, int64_t position, float* x) {
  const int64_t half = rope.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = rope.Angle(position, i);
    const float c = std::cos(a), s = std::sin(a);
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c + x1 * s;
    x[i + half] = x1 * c - x0 * s;
  }
}

}  // namespace livekv
