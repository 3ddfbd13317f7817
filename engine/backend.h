// File: engine/backend.h
//
// The compute backend of the engine: memory and the handful of operations a Llama/Qwen2 forward pass needs.
// The transformer (engine/transformer.h) is written once against this interface; the CPU backend
// (engine/cpu/) is the fp32 reference and the CUDA backend implements the same operations on a stream.
//
// Conventions for every operation:
//   - tensors are TensorViews into memory this backend allocated; outputs are preallocated by the caller;
//   - shapes are checked, and a mismatch is INVALID_ARGUMENT naming the operand and the shapes seen;
//   - operations may run asynchronously (CUDA); CopyToHost and Synchronize wait for them.
//
// Thread-safety: a backend instance is used by one thread at a time (the caller serialises).
#ifndef LIVEKV_ENGINE_BACKEND_H_
#define LIVEKV_ENGINE_BACKEND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/dtype.h"
#include "engine/kv_run.h"
#include "engine/rope.h"
#include "engine/tensor.h"

namespace livekv {

// Everything one attention call needs. Row r of the chunk is the token at position pos0 + r.
struct AttentionArgs {
  TensorView q;  // [n][num_heads][head_dim], post-RoPE
  TensorView k;  // [n][num_kv_heads][head_dim], post-RoPE: the chunk's own keys, causal among themselves
  TensorView v;  // [n][num_kv_heads][head_dim]
  int64_t pos0 = 0;
  // Cached tokens every row of the chunk may attend to (subject to sliding_window). May be null.
  const ContextKv* context = nullptr;
  float scale = 1.0f;          // softmax scale, usually 1/sqrt(head_dim)
  int64_t sliding_window = 0;  // 0: none. Otherwise a key at position p is visible to a query at position t
                               // iff t - p < sliding_window; context runs must then carry positions.
  TensorView out;              // [n][num_heads][head_dim]
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "cuda:0".
  virtual std::string name() const = 0;
  // The dtype of activations and of the weights this backend keeps (fp32 on the CPU, bf16 on CUDA).
  virtual DType activation_dtype() const = 0;
  virtual DType weight_dtype() const = 0;
  // The dtype the transformer allocates its logits buffer in (the LM head's output). fp32 on CUDA, where the
  // activations are bf16 but logits are kept in fp32 for sampling; the activation dtype by default.
  virtual DType logits_dtype() const { return activation_dtype(); }

  // --- Memory --------------------------------------------------------------------------------------------
  // RESOURCE_EXHAUSTED when the memory is not available.
  virtual absl::StatusOr<Tensor> Allocate(DType dtype, const Shape& shape) = 0;
  // Copies `dst.numel()` elements of type `src_dtype` from host memory into dst, converting to dst.dtype.
  // REQUIRES: float types convert among themselves; integer types only to themselves.
  virtual absl::Status CopyFromHost(const void* src, DType src_dtype, TensorView dst) = 0;
  // Copies src into host memory as fp32 (converting), after all earlier work on the backend has finished.
  virtual absl::Status CopyToHost(TensorView src, float* dst) = 0;
  // dst = src (same dtype and element count), within this backend's memory.
  virtual absl::Status Copy(TensorView src, TensorView dst) = 0;
  // Waits for all issued work.
  virtual absl::Status Synchronize() = 0;

  // --- Operations -----------------------------------------------------------------------------------------
  // out[i] = table[ids[i]]. table [vocab][hidden], out [n][hidden]. INVALID_ARGUMENT for an id out of range.
  virtual absl::Status Embed(absl::Span<const int32_t> ids, TensorView table, TensorView out) = 0;
  // out = x / sqrt(mean(x^2) + eps) * weight, per row. x, out [n][hidden]; weight [hidden].
  virtual absl::Status RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) = 0;
  // out = x · w^T (+ bias), the nn.Linear layout: x [n][in], w [out][in], bias [out] or null, out [n][out].
  virtual absl::Status Linear(TensorView x, TensorView w, const TensorView* bias, TensorView out) = 0;
  // Splits a fused projection qkv [n][(Hq + 2 Hkv) * D] into q [n][Hq][D], k [n][Hkv][D], v [n][Hkv][D],
  // applying rotary embeddings to q and k for positions pos0 .. pos0 + n - 1.
  virtual absl::Status SplitQkvRope(TensorView qkv, int64_t pos0, const RopeTable& rope, TensorView q,
                                    TensorView k, TensorView v) = 0;
  // out = silu(gate) * up where gate_up [n][2 I] holds gate in its first I columns and up in the last I.
  virtual absl::Status SwiGlu(TensorView gate_up, TensorView out) = 0;
  // x += y, elementwise. Same shapes.
  virtual absl::Status AddInPlace(TensorView x, TensorView y) = 0;
  // Grouped-query attention of the chunk over its context and itself (see AttentionArgs).
  virtual absl::Status Attention(const AttentionArgs& args) = 0;
  // Token-major to head-major: src [n][H][D] → dst [H][capacity][D] rows [row0, row0 + n) of every head.
  // The layout change the KV cache does on append. src and dst may differ in dtype (float types).
  virtual absl::Status ScatterHeadMajor(TensorView src, TensorView dst, int64_t row0) = 0;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_BACKEND_H_
