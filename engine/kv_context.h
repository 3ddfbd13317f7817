// File: engine/kv_context.h
//
// The engine's window onto one sequence's KV cache. The transformer asks it, layer by layer, what the chunk's
// queries attend to among the cached tokens (Select), hands it the chunk's new keys and values (Append), and
// finally commits the chunk. A KV-cache policy (kvcache/: full, streaming, quest, clusterkv, ...) is an
// implementation of this interface, so policies plug in without touching the model code.
//
// Protocol for one chunk of n tokens at positions [num_tokens(), num_tokens() + n):
//   for layer in 0 .. L-1:  Select(layer, q, &ctx)  then  Append(layer, k, v)
//   Commit(n)            — or Rollback() if anything failed; then the cache is exactly as before the chunk.
// Cached tokens never include the chunk itself; attention handles the chunk's own causal part.
//
// Thread-safety: one sequence is driven by one thread at a time.
#ifndef LIVEKV_ENGINE_KV_CONTEXT_H_
#define LIVEKV_ENGINE_KV_CONTEXT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "engine/kv_run.h"
#include "engine/tensor.h"

namespace livekv {

class KvContext {
 public:
  virtual ~KvContext() = default;

  // Tokens committed so far; the next chunk starts at this position.
  virtual int64_t num_tokens() const = 0;

  // Fills `ctx` with what each KV head of `layer` attends to among the committed tokens, given the chunk's
  // post-RoPE queries q [n][num_heads][head_dim] in backend memory. The runs stay valid until the next call on
  // this context. ctx->query_copy arrives null; a context may point it at its own buffer (one-row chunks only).
  virtual absl::Status Select(int layer, TensorView q, ContextKv* ctx) = 0;

  // Stores the chunk's post-RoPE keys and values, each [n][num_kv_heads][head_dim], for `layer`. Not visible to
  // Select until Commit.
  virtual absl::Status Append(int layer, TensorView k, TensorView v) = 0;

  // Makes the appended chunk of n tokens part of the cache. REQUIRES: every layer appended n rows.
  virtual absl::Status Commit(int64_t n) = 0;

  // Discards whatever was appended since the last Commit.
  virtual void Rollback() = 0;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_KV_CONTEXT_H_
