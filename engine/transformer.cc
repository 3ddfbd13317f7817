#include "engine/transformer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {

Transformer::Transformer(const ModelConfig& config, ModelWeights weights, Backend* backend,
                         const TransformerOptions& options)
    : config_(config),
      weights_(std::move(weights)),
      backend_(backend),
      options_(options),
      rope_(RopeTable::FromConfig(config)),
      logit_rows_(std::min<int64_t>(options.max_chunk, 16)) {}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const ModelConfig& config, ModelWeights weights,
                                                                 Backend* backend,
                                                                 const TransformerOptions& options) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  if (options.max_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunk must be >= 1, saw ", options.max_chunk));
  }
  if (static_cast<int64_t>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights have ", weights.layers.size(), " layers, config has ", config.num_layers));
  }
  std::unique_ptr<Transformer> t(new Transformer(config, std::move(weights), backend, options));
  LIVEKV_RETURN_IF_ERROR(t->AllocateActivations());
  return t;
}

absl::Status Transformer::AllocateActivations() {
  const DType t = backend_->activation_dtype();
  const int64_t c = options_.max_chunk, h = config_.hidden_size, d = config_.head_dim;
  const std::pair<Tensor*, Shape> buffers[] = {
      {&x_, {c, h}},
      {&xn_, {c, h}},
      {&qkv_, {c, config_.q_dim() + 2 * config_.kv_dim()}},
      {&q_, {c, config_.num_heads, d}},
      {&k_, {c, config_.num_kv_heads, d}},
      {&v_, {c, config_.num_kv_heads, d}},
      {&attn_, {c, config_.num_heads, d}},
      {&proj_, {c, h}},
      {&gate_up_, {c, 2 * config_.intermediate_size}},
      {&act_, {c, config_.intermediate_size}},
      {&logits_, {logit_rows_, config_.vocab_size}},
  };
  for (const auto& [tensor, shape] : buffers) {
    LIVEKV_ASSIGN_OR_RETURN(*tensor, backend_->Allocate(tensor == &logits_ ? backend_->logits_dtype() : t, shape));
  }
  return absl::OkStatus();
}

absl::Status Transformer::Forward(absl::Span<const int32_t> tokens, KvContext* kv, bool all_logits,
                                  std::vector<float>* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("forward: no tokens");
  const int64_t pos0 = kv->num_tokens();
  const int64_t end = pos0 + static_cast<int64_t>(tokens.size());
  if (end > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("forward: positions up to ", end - 1,
                                                   " exceed the model's max_position_embeddings of ",
                                                   config_.max_position_embeddings, " (", pos0, " cached + ",
                                                   tokens.size(), " new tokens)"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("forward: token id ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary of ", config_.vocab_size));
    }
  }
  logits->clear();
  const int64_t total = static_cast<int64_t>(tokens.size());
  for (int64_t begin = 0; begin < total; begin += options_.max_chunk) {
    const int64_t n = std::min(options_.max_chunk, total - begin);
    const bool last_chunk = begin + n == total;
    // Logits are only produced for the rows asked for: all rows, or the very last one.
    const int64_t first_logit_row = all_logits ? 0 : (last_chunk ? n - 1 : n);
    absl::Status s = ForwardChunk(tokens.subspan(begin, n), kv, first_logit_row, logits);
    if (!s.ok()) {
      kv->Rollback();
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Transformer::ForwardChunk(absl::Span<const int32_t> tokens, KvContext* kv, int64_t first_logit_row,
                                       std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t pos0 = kv->num_tokens();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Backend& b = *backend_;
  const TensorView x = x_.view().Rows(0, n), xn = xn_.view().Rows(0, n), qkv = qkv_.view().Rows(0, n);
  const TensorView q = q_.view().Rows(0, n), k = k_.view().Rows(0, n), v = v_.view().Rows(0, n);
  const TensorView attn = attn_.view().Rows(0, n), proj = proj_.view().Rows(0, n);
  const TensorView gate_up = gate_up_.view().Rows(0, n), act = act_.view().Rows(0, n);

  LIVEKV_RETURN_IF_ERROR(b.Embed(tokens, weights_.embed.view(), x));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    // Attention block.
    LIVEKV_RETURN_IF_ERROR(b.RmsNorm(x, w.attn_norm.view(), eps, xn));
    LIVEKV_RETURN_IF_ERROR(b.Linear(xn, w.wqkv.view(), w.bqkv.empty() ? nullptr : &w.bqkv.view(), qkv));
    LIVEKV_RETURN_IF_ERROR(b.SplitQkvRope(qkv, pos0, rope_, q, k, v));
    context_.query_copy = nullptr;  // context_ is reused: only a context that asks for a query copy this layer gets one
    LIVEKV_RETURN_IF_ERROR(kv->Select(static_cast<int>(l), q, &context_));
    AttentionArgs args;
    args.q = q;
    args.k = k;
    args.v = v;
    args.pos0 = pos0;
    args.context = &context_;
    args.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
    args.sliding_window = config_.sliding_window;
    args.out = attn;
    LIVEKV_RETURN_IF_ERROR(b.Attention(args));
    LIVEKV_RETURN_IF_ERROR(kv->Append(static_cast<int>(l), k, v));
    LIVEKV_RETURN_IF_ERROR(b.Linear(attn.Reshaped(Shape{n, config_.q_dim()}), w.wo.view(),
                                    w.bo.empty() ? nullptr : &w.bo.view(), proj));
    LIVEKV_RETURN_IF_ERROR(b.AddInPlace(x, proj));
    // MLP block.
    LIVEKV_RETURN_IF_ERROR(b.RmsNorm(x, w.mlp_norm.view(), eps, xn));
    LIVEKV_RETURN_IF_ERROR(b.Linear(xn, w.w_gate_up.view(), nullptr, gate_up));
    LIVEKV_RETURN_IF_ERROR(b.SwiGlu(gate_up, act));
    LIVEKV_RETURN_IF_ERROR(b.Linear(act, w.w_down.view(), nullptr, proj));
    LIVEKV_RETURN_IF_ERROR(b.AddInPlace(x, proj));
  }
  // Final norm and LM head for the requested rows, a few rows at a time.
  const int64_t vocab = config_.vocab_size;
  for (int64_t r = first_logit_row; r < n; r += logit_rows_) {
    const int64_t m = std::min(logit_rows_, n - r);
    const TensorView rows = x.Rows(r, m), normed = xn.Rows(r, m), out = logits_.view().Rows(0, m);
    LIVEKV_RETURN_IF_ERROR(b.RmsNorm(rows, weights_.final_norm.view(), eps, normed));
    LIVEKV_RETURN_IF_ERROR(b.Linear(normed, weights_.output().view(), nullptr, out));
    const size_t old = logits->size();
    logits->resize(old + m * vocab);
    LIVEKV_RETURN_IF_ERROR(b.CopyToHost(out, logits->data() + old));
  }
  return kv->Commit(n);
}

}  // namespace livekv
