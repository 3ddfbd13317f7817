// File: engine/transformer.h
//
// The forward pass of a Llama/Qwen2/Mistral decoder, written once against the Backend interface. It runs chunks
// of one sequence: each chunk attends to what the sequence's KvContext selects among the cached tokens plus the
// chunk itself (causally), and its keys and values are appended to the context.
//
//   LIVEKV_ASSIGN_OR_RETURN(auto model, Transformer::Create(config, std::move(weights), &backend));
//   LIVEKV_ASSIGN_OR_RETURN(auto kv, DenseKvCache::Create(config, &backend, DType::kF32));
//   std::vector<float> logits;
//   LIVEKV_RETURN_IF_ERROR(model->Forward(prompt_ids, kv.get(), /*all_logits=*/false, &logits));
//
// Thread-safety: not thread-safe (it owns one set of activation buffers). Use one per thread.
#ifndef LIVEKV_ENGINE_TRANSFORMER_H_
#define LIVEKV_ENGINE_TRANSFORMER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/kv_context.h"
#include "engine/model_config.h"
#include "engine/rope.h"
#include "engine/weights.h"

namespace livekv {

struct TransformerOptions {
  // Tokens per forward chunk; activation buffers are sized for it once. Longer inputs are split.
  int64_t max_chunk = 256;
};

class Transformer {
 public:
  // `backend` must outlive the transformer; `weights` must live in its memory.
  static absl::StatusOr<std::unique_ptr<Transformer>> Create(const ModelConfig& config, ModelWeights weights,
                                                             Backend* backend,
                                                             const TransformerOptions& options = {});

  // Runs `tokens`, the next tokens of the sequence behind `kv`, in chunks of at most max_chunk tokens. Each chunk
  // is committed to `kv` when it completes; a failing chunk is rolled back (earlier chunks stay committed).
  // `logits` receives [rows][vocab] fp32: one row per token when all_logits, else the last token's row.
  // INVALID_ARGUMENT for an empty input, a token outside the vocabulary, or positions past
  // max_position_embeddings.
  absl::Status Forward(absl::Span<const int32_t> tokens, KvContext* kv, bool all_logits, std::vector<float>* logits);

  const ModelConfig& config() const { return config_; }
  Backend* backend() const { return backend_; }
  const ModelWeights& weights() const { return weights_; }

 private:
  Transformer(const ModelConfig& config, ModelWeights weights, Backend* backend, const TransformerOptions& options);
  absl::Status AllocateActivations();
  // One chunk of n <= max_chunk tokens. Logits of rows [first_logit_row, n) are appended to `logits`.
  absl::Status ForwardChunk(absl::Span<const int32_t> tokens, KvContext* kv, int64_t first_logit_row,
                            std::vector<float>* logits);

  const ModelConfig config_;
  const ModelWeights weights_;
  Backend* const backend_;
  const TransformerOptions options_;
  const RopeTable rope_;
  const int64_t logit_rows_;  // rows of the logits buffer (bounds its memory at large vocabularies)

  // Activations for max_chunk rows.
  Tensor x_, xn_, qkv_, q_, k_, v_, attn_, proj_, gate_up_, act_, logits_;
  ContextKv context_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TRANSFORMER_H_
