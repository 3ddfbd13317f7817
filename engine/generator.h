// File: engine/generator.h
//
// The generation loop on one sequence: prefill the prompt, then decode token by token through the KvContext
// until a stop token, the token limit, or the callback says stop. Times each stage.
#ifndef LIVEKV_ENGINE_GENERATOR_H_
#define LIVEKV_ENGINE_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/kv_context.h"
#include "engine/sampler.h"
#include "engine/transformer.h"

namespace livekv {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;     // prompt forward pass, up to the first token's logits
  double decode_seconds = 0;      // every later step
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  // Decode steps after the first token (whose cost is the prefill).
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? (generated_tokens - 1) / decode_seconds : 0;
  }
};

// Emits each generated token to `on_token`; generation stops early when it returns false. `prompt` continues the
// sequence already in `kv` (it may be the whole prompt of a fresh sequence).
absl::Status Generate(Transformer* model, KvContext* kv, absl::Span<const int32_t> prompt,
                      const GenerateOptions& options, const std::function<bool(int32_t)>& on_token,
                      GenerateStats* stats);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_GENERATOR_H_
