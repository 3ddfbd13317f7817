// File: services/prefill/prefill_worker.h
//
// The prefill service's work, independent of gRPC: append tokens to a stored session. For one append it
//   1. takes the session's turn (appends to one session run in arrival order; RESOURCE_EXHAUSTED when too many
//      are queued),
//   2. builds (or reuses, when the session has not changed since this worker's last append to it) a local mirror
//      of the session's KV, recalled from the KV store under a lease,
//   3. runs the model over the tokens attending densely to the session's context, recording the new keys and
//      values,
//   4. lets the session's policy plan its end-of-input maintenance (clusterkv clusters what is now older than the
//      recent window) and applies it to the mirror,
//   5. writes the rows and that plan to the store with its two-phase append, conditional on the session still
//      having the tokens the work was based on (ABORTED otherwise).
// If the worker or its process dies before the commit, the store aborts the append and the session is unchanged.
//
// Thread-safety: thread-safe; calls for different sessions may overlap, model passes are serialised.
#ifndef LIVEKV_SERVICES_PREFILL_PREFILL_WORKER_H_
#define LIVEKV_SERVICES_PREFILL_PREFILL_WORKER_H_

#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "kvcache/policy_kv_context.h"
#include "services/common/session_queue.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {

struct PrefillWorkerOptions {
  std::string model_name;        // sessions must name this model (or none)
  int max_queue_per_session = 8;
  int max_queue_total = 64;
  int cached_mirrors = 8;        // sessions whose mirror is kept between appends
  absl::Duration lease_ttl = absl::Seconds(60);
};

struct AppendResult {
  int64_t tokens_appended = 0;
  int64_t session_tokens = 0;
  int64_t session_version = 0;
  double recall_ms = 0, prefill_ms = 0, cluster_ms = 0, write_ms = 0;
  bool mirror_reused = false;
};

class PrefillWorker {
 public:
  // `model` must live on `backend`; both and `store` are borrowed.
  PrefillWorker(const LoadedModel* model, CpuBackend* backend, KvStoreClient* store,
                const PrefillWorkerOptions& options);

  // Appends `ids` to the session. INVALID_ARGUMENT for empty input, ids outside the vocabulary or positions past
  // the model's limit; FAILED_PRECONDITION when the session was made for another model or geometry; NOT_FOUND for
  // an unknown session; CANCELLED when `cancelled` becomes true (checked between chunks).
  absl::StatusOr<AppendResult> Append(const std::string& session_id, const std::vector<int32_t>& ids,
                                      const std::function<bool()>& cancelled);

  const LoadedModel& model() const { return *model_; }

 private:
  struct Mirror {
    std::string session_id;
    int64_t version = 0;
    std::unique_ptr<PagePool> pool;
    std::unique_ptr<PolicyKvContext> kv;
  };
  std::unique_ptr<Mirror> TakeCachedMirror(const std::string& session_id, int64_t version);
  void CacheMirror(std::unique_ptr<Mirror> mirror);

  const LoadedModel* const model_;
  CpuBackend* const backend_;
  KvStoreClient* const store_;
  const PrefillWorkerOptions options_;
  SessionQueue queue_;
  HostAllocator host_;
  absl::Mutex model_mu_;  // one model pass at a time (the transformer owns one set of activations)
  absl::Mutex cache_mu_;
  std::list<std::unique_ptr<Mirror>> cache_ ABSL_GUARDED_BY(cache_mu_);  // most recent first
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_PREFILL_PREFILL_WORKER_H_
