// File: engine/dense_kv_cache.h
//
// The simplest KvContext: every token of every layer kept in backend memory, head-major per layer
// ([num_kv_heads][capacity][head_dim] for K and for V), and every cached token attended (full attention).
// Capacity grows by doubling. This is the `full` baseline and the reference the sparse policies are checked
// against.
#ifndef LIVEKV_ENGINE_DENSE_KV_CACHE_H_
#define LIVEKV_ENGINE_DENSE_KV_CACHE_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/kv_context.h"
#include "engine/model_config.h"

namespace livekv {

class DenseKvCache : public KvContext {
 public:
  // `dtype` is the storage type of K and V (fp32 or bf16). `backend` must outlive the cache.
  static absl::StatusOr<std::unique_ptr<DenseKvCache>> Create(const ModelConfig& config, Backend* backend,
                                                              DType dtype, int64_t initial_capacity = 256);

  int64_t num_tokens() const override { return committed_; }
  absl::Status Select(int layer, TensorView q, ContextKv* ctx) override;
  absl::Status Append(int layer, TensorView k, TensorView v) override;
  absl::Status Commit(int64_t n) override;
  void Rollback() override;

  // The first `num_tokens()` rows of head `h` of `layer`: K rows [num_tokens][head_dim] (for tests and tools).
  TensorView KeysOfHead(int layer, int64_t h) const;
  TensorView ValuesOfHead(int layer, int64_t h) const;
  // The storage type and bytes in use.
  DType dtype() const { return dtype_; }
  int64_t capacity() const { return capacity_; }

 private:
  DenseKvCache(const ModelConfig& config, Backend* backend, DType dtype);
  absl::Status Reserve(int64_t tokens);
  TensorView HeadRows(const Tensor& t, int64_t h, int64_t rows) const;

  const int64_t num_layers_, num_kv_heads_, head_dim_;
  Backend* const backend_;
  const DType dtype_;
  int64_t capacity_ = 0;
  int64_t committed_ = 0;
  std::vector<Tensor> keys_, values_;    // per layer [num_kv_heads][capacity][head_dim]
  std::vector<int64_t> pending_;         // per layer: rows appended since the last commit
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_DENSE_KV_CACHE_H_
