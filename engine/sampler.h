// File: engine/sampler.h
//
// Next-token sampling: greedy, or temperature with optional top-k and top-p (nucleus), from a seeded generator so
// that a (seed, logits) sequence always yields the same tokens.
#ifndef LIVEKV_ENGINE_SAMPLER_H_
#define LIVEKV_ENGINE_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace livekv {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax; the lowest id wins a tie)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose probability reaches top_p
  int32_t top_k = 0;         // 0: no limit
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the parameter: temperature < 0, top_p outside (0, 1], top_k < 0.
  absl::Status Validate() const;
};

// Thread-compatible: one sampler per sequence.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(absl::Span<const float> logits);

 private:
  double NextUniform();  // in [0, 1)

  SamplingParams params_;
  uint64_t state_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_SAMPLER_H_
