#include "services/prefill/prefill_worker.h"

#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "services/common/convert.h"
#include "services/common/session_policy.h"

namespace livekv {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Forwards to a PolicyKvContext and keeps the committed rows of every layer, token-major, in the sequence's
// dtype: what the store needs to append.
class RecordingKvContext : public KvContext {
 public:
  RecordingKvContext(PolicyKvContext* inner, int32_t num_layers, DType dtype)
      : inner_(inner), dtype_(dtype), keys_(num_layers), values_(num_layers), committed_(num_layers, 0) {}

  int64_t num_tokens() const override { return inner_->num_tokens(); }
  absl::Status Select(int layer, TensorView q, ContextKv* ctx) override { return inner_->Select(layer, q, ctx); }
  absl::Status Append(int layer, TensorView k, TensorView v) override {
    LIVEKV_RETURN_IF_ERROR(inner_->Append(layer, k, v));
    Record(k, &keys_[layer]);
    Record(v, &values_[layer]);
    return absl::OkStatus();
  }
  absl::Status Commit(int64_t n) override {
    LIVEKV_RETURN_IF_ERROR(inner_->Commit(n));
    for (size_t l = 0; l < keys_.size(); ++l) committed_[l] = keys_[l].size();
    return absl::OkStatus();
  }
  void Rollback() override {
    inner_->Rollback();
    for (size_t l = 0; l < keys_.size(); ++l) {
      keys_[l].resize(committed_[l]);
      values_[l].resize(committed_[l]);
    }
  }

  const std::vector<std::string>& keys() const { return keys_; }
  const std::vector<std::string>& values() const { return values_; }

 private:
  void Record(TensorView t, std::string* out) {
    const size_t old = out->size();
    out->resize(old + t.numel() * DTypeSize(dtype_));
    ConvertFloats(t.data, t.dtype, &(*out)[old], dtype_, t.numel());
  }

  PolicyKvContext* inner_;
  const DType dtype_;
  std::vector<std::string> keys_, values_;
  std::vector<size_t> committed_;
};

}  // namespace

PrefillWorker::PrefillWorker(const LoadedModel* model, CpuBackend* backend, KvStoreClient* store,
                             const PrefillWorkerOptions& options)
    : model_(model),
      backend_(backend),
      store_(store),
      options_(options),
      queue_(options.max_queue_per_session, options.max_queue_total) {}

std::unique_ptr<PrefillWorker::Mirror> PrefillWorker::TakeCachedMirror(const std::string& session_id,
                                                                       int64_t version) {
  absl::MutexLock lock(&cache_mu_);
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if ((*it)->session_id != session_id) continue;
    std::unique_ptr<Mirror> m = std::move(*it);
    cache_.erase(it);
    if (m->version == version) return m;
    return nullptr;  // stale: the session changed elsewhere
  }
  return nullptr;
}

void PrefillWorker::CacheMirror(std::unique_ptr<Mirror> mirror) {
  absl::MutexLock lock(&cache_mu_);
  cache_.push_front(std::move(mirror));
  while (static_cast<int>(cache_.size()) > options_.cached_mirrors) cache_.pop_back();
}

absl::StatusOr<AppendResult> PrefillWorker::Append(const std::string& session_id, const std::vector<int32_t>& ids,
                                                   const std::function<bool()>& cancelled) {
  const ModelConfig& config = model_->config;
  if (ids.empty()) return absl::InvalidArgumentError("nothing to append: the input has no tokens");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary of ", config.vocab_size));
    }
  }
  LIVEKV_ASSIGN_OR_RETURN(SessionQueue::Turn turn, queue_.Enter(session_id, cancelled));
  LIVEKV_ASSIGN_OR_RETURN(v1::Session session, store_->GetSession(session_id));
  LIVEKV_ASSIGN_OR_RETURN(PolicyOptions policy, SessionPolicy(session, config, options_.model_name));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (session.num_tokens() + n > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("session ", session_id, " has ", session.num_tokens(),
                                                   " tokens; ", n, " more exceed the model's ",
                                                   config.max_position_embeddings, " positions"));
  }
  AppendResult result;
  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Mirror> mirror = TakeCachedMirror(session_id, session.version());
  result.mirror_reused = mirror != nullptr;
  if (mirror == nullptr) {
    LIVEKV_ASSIGN_OR_RETURN(StoreLease lease, store_->AcquireLease(session_id, options_.lease_ttl, "prefill"));
    absl::Cleanup release = [&] { (void)store_->ReleaseLease(lease); };
    mirror = std::make_unique<Mirror>();
    mirror->session_id = session_id;
    LIVEKV_ASSIGN_OR_RETURN(mirror->pool, CreateKvPagePool(config, policy, config.max_position_embeddings, &host_));
    LIVEKV_ASSIGN_OR_RETURN(KvStoreClient::Mirror loaded,
                            store_->LoadMirror(session_id, lease, mirror->pool.get(), /*with_bytes=*/true));
    if (loaded.kv->num_tokens() != session.num_tokens()) {
      return absl::AbortedError(absl::StrCat("session ", session_id, " changed while it was read; retry"));
    }
    LIVEKV_ASSIGN_OR_RETURN(mirror->kv,
                            PolicyKvContext::Adopt(config, policy, std::move(loaded.kv), backend_->pool()));
    mirror->kv->set_sparse_prefill(false);  // documents are prefilled densely, whatever questions do
  }
  result.recall_ms = MsSince(t0);

  // The model pass, a chunk at a time so cancellation is noticed; any failure discards the mirror.
  RecordingKvContext recorder(mirror->kv.get(), static_cast<int32_t>(config.num_layers),
                              mirror->kv->sequence().geometry().layout.dtype);
  t0 = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&model_mu_);
    std::vector<float> logits;
    const int64_t chunk = 256;
    for (int64_t begin = 0; begin < n; begin += chunk) {
      if (cancelled && cancelled()) return absl::CancelledError("the append was cancelled");
      const int64_t len = std::min(chunk, n - begin);
      LIVEKV_RETURN_IF_ERROR(model_->transformer->Forward(absl::MakeConstSpan(ids).subspan(begin, len), &recorder,
                                                          /*all_logits=*/false, &logits));
    }
  }
  result.prefill_ms = MsSince(t0);
  t0 = std::chrono::steady_clock::now();
  LIVEKV_RETURN_IF_ERROR(mirror->kv->FinishAppend());
  const Maintenance maintenance = mirror->kv->TakeMaintenanceLog();
  result.cluster_ms = MsSince(t0);
  if (cancelled && cancelled()) return absl::CancelledError("the append was cancelled");

  t0 = std::chrono::steady_clock::now();
  LIVEKV_ASSIGN_OR_RETURN(v1::Session after, store_->Append(session_id, session.num_tokens(), n, recorder.keys(),
                                                            recorder.values(), maintenance));
  result.write_ms = MsSince(t0);
  result.tokens_appended = n;
  result.session_tokens = after.num_tokens();
  result.session_version = after.version();
  mirror->version = after.version();
  CacheMirror(std::move(mirror));
  return result;
}

}  // namespace livekv
