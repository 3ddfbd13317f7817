#include "engine/dense_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace livekv {

DenseKvCache::DenseKvCache(const ModelConfig& config, Backend* backend, DType dtype)
    : num_layers_(config.num_layers),
      num_kv_heads_(config.num_kv_heads),
      head_dim_(config.head_dim),
      backend_(backend),
      dtype_(dtype),
      keys_(config.num_layers),
      values_(config.num_layers),
      pending_(config.num_layers, 0) {}

absl::StatusOr<std::unique_ptr<DenseKvCache>> DenseKvCache::Create(const ModelConfig& config, Backend* backend,
                                                                   DType dtype, int64_t initial_capacity) {
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype must be a float type, saw ", DTypeName(dtype)));
  }
  std::unique_ptr<DenseKvCache> cache(new DenseKvCache(config, backend, dtype));
  LIVEKV_RETURN_IF_ERROR(cache->Reserve(std::max<int64_t>(1, initial_capacity)));
  return cache;
}

absl::Status DenseKvCache::Reserve(int64_t tokens) {
  if (tokens <= capacity_) return absl::OkStatus();
  int64_t new_capacity = std::max<int64_t>(capacity_, 1);
  while (new_capacity < tokens) new_capacity *= 2;
  // Rows to keep: committed plus those appended to each layer so far in the current chunk.
  for (int64_t l = 0; l < num_layers_; ++l) {
    for (std::vector<Tensor>* store : {&keys_, &values_}) {
      LIVEKV_ASSIGN_OR_RETURN(Tensor grown,
                              backend_->Allocate(dtype_, Shape{num_kv_heads_, new_capacity, head_dim_}));
      Tensor& old = (*store)[l];
      const int64_t keep = committed_ + pending_[l];
      if (!old.empty() && keep > 0) {
        for (int64_t h = 0; h < num_kv_heads_; ++h) {
          TensorView dst = grown.view().Rows(h, 1).Reshaped(Shape{new_capacity, head_dim_}).Rows(0, keep);
          LIVEKV_RETURN_IF_ERROR(backend_->Copy(HeadRows(old, h, keep), dst));
        }
      }
      old = std::move(grown);
    }
  }
  capacity_ = new_capacity;
  return absl::OkStatus();
}

TensorView DenseKvCache::HeadRows(const Tensor& t, int64_t h, int64_t rows) const {
  return t.view().Rows(h, 1).Reshaped(Shape{capacity_, head_dim_}).Rows(0, rows);
}

TensorView DenseKvCache::KeysOfHead(int layer, int64_t h) const { return HeadRows(keys_[layer], h, committed_); }

TensorView DenseKvCache::ValuesOfHead(int layer, int64_t h) const {
  return HeadRows(values_[layer], h, committed_);
}

absl::Status DenseKvCache::Select(int layer, TensorView q, ContextKv* ctx) {
  if (layer < 0 || layer >= num_layers_) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ", num_layers_, ")"));
  }
  ctx->dtype = dtype_;
  ctx->heads.assign(num_kv_heads_, {});
  if (committed_ == 0) return absl::OkStatus();
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    KvRun run;
    run.k = KeysOfHead(layer, h).data;
    run.v = ValuesOfHead(layer, h).data;
    run.n = static_cast<int32_t>(committed_);
    run.first_position = 0;
    ctx->heads[h].push_back(run);
  }
  return absl::OkStatus();
}

absl::Status DenseKvCache::Append(int layer, TensorView k, TensorView v) {
  if (layer < 0 || layer >= num_layers_) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ", num_layers_, ")"));
  }
  const Shape want{k.rank() > 0 ? k.dim(0) : 0, num_kv_heads_, head_dim_};
  if (k.shape != want || v.shape != want) {
    return absl::InvalidArgumentError(absl::StrCat("KV append to layer ", layer, ": k ", ShapeToString(k.shape),
                                                   " and v ", ShapeToString(v.shape), " must be ",
                                                   ShapeToString(want)));
  }
  const int64_t n = k.dim(0);
  LIVEKV_RETURN_IF_ERROR(Reserve(committed_ + pending_[layer] + n));
  const int64_t row0 = committed_ + pending_[layer];
  LIVEKV_RETURN_IF_ERROR(backend_->ScatterHeadMajor(k, keys_[layer].view(), row0));
  LIVEKV_RETURN_IF_ERROR(backend_->ScatterHeadMajor(v, values_[layer].view(), row0));
  pending_[layer] += n;
  return absl::OkStatus();
}

absl::Status DenseKvCache::Commit(int64_t n) {
  for (int64_t l = 0; l < num_layers_; ++l) {
    if (pending_[l] != n) {
      return absl::FailedPreconditionError(
          absl::StrCat("commit of ", n, " tokens but layer ", l, " appended ", pending_[l]));
    }
  }
  committed_ += n;
  std::fill(pending_.begin(), pending_.end(), 0);
  return absl::OkStatus();
}

void DenseKvCache::Rollback() { std::fill(pending_.begin(), pending_.end(), 0); }

}  // namespace livekv
