// File: kvcache/policy.h
//
// A KV-cache policy decides, layer by layer, what each KV head attends to among a sequence's cached tokens, and
// maintains the sequence's blocks as tokens arrive (clustering finished windows, dropping old tokens). One
// interface for every policy so that every comparison runs in one binary:
//
//   full       every cached token
//   streaming  sink + the most recent tokens; older pages are freed (StreamingLLM)
//   quest      sink + recent pages + positional pages ranked by Quest's min/max key bounds
//   clusterkv  sink + recent window + semantic clusters ranked by q·centroid (ClusterKV)
//
// Thread-safety: a policy instance serves one sequence, driven by one thread.
#ifndef LIVEKV_KVCACHE_POLICY_H_
#define LIVEKV_KVCACHE_POLICY_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/policy_options.h"
#include "kvcache/selection.h"
#include "kvcache/sequence_kv.h"

namespace livekv {

class ThreadPool;

// What each KV head of one layer attends to.
struct LayerSelection {
  std::vector<HeadSelection> heads;  // [num_kv_heads]
  bool dense = false;                // every cached token (dense layer, prefill, or a short context)
};

// The queries of one chunk for one layer: q [rows][num_heads][head_dim], host fp32, post-RoPE.
struct ChunkQueries {
  const float* q = nullptr;
  int64_t rows = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  // Multi-token chunks attend to their selection (pooled over the chunk's tokens) instead of densely.
  bool sparse_prefill = false;
  // The query group of KV head g.
  QueryGroup Group(int32_t g, int32_t group_size) const {
    return QueryGroup{q + static_cast<int64_t>(g) * group_size * head_dim, static_cast<int32_t>(rows),
                      static_cast<int64_t>(num_heads) * head_dim, group_size, head_dim};
  }
};

// Changes a policy wants made to a sequence's blocks: clusterings of old positional pages (clusterkv) and old pages
// to free (streaming). Planned from a read-only sequence, applied by whoever owns it (ApplyMaintenance), so the
// prefill service can apply a plan to its local copy of a session and send the same plan to the KV store.
struct Maintenance {
  std::vector<HeadClustering> clusterings;
  int32_t drop_pages = 0;
  bool empty() const { return clusterings.empty() && drop_pages == 0; }
};

absl::Status ApplyMaintenance(SequenceKv* kv, const Maintenance& m);

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;

  const PolicyOptions& options() const { return options_; }

  // Fills `out` for `layer` given the chunk's queries.
  virtual absl::Status Select(const SequenceKv& kv, int32_t layer, const ChunkQueries& q, LayerSelection* out) = 0;

  // Maintenance after every committed chunk (streaming frees pages that left its window).
  virtual absl::StatusOr<Maintenance> AfterCommit(const SequenceKv& kv) { return Maintenance{}; }

  // Maintenance at a settle point: the end of an input (a prompt, a document) or the start of a decode step.
  // clusterkv clusters the tokens older than the recent window here once cluster_window of them have gathered:
  // a freshly prefilled prompt as ClusterKV does after prefill, and each batch of generated tokens.
  virtual absl::StatusOr<Maintenance> AtSettlePoint(const SequenceKv& kv) { return Maintenance{}; }

 protected:
  explicit KvPolicy(const PolicyOptions& options) : options_(options) {}
  bool IsDenseLayer(int32_t layer) const;
  // The whole cache for every head (dense attention).
  void SelectEverything(const SequenceKv& kv, int32_t layer, LayerSelection* out) const;

  const PolicyOptions options_;
};

// `group_size` is the model's query heads per KV head; `threads` (may be null) runs clustering in parallel.
// INVALID_ARGUMENT for invalid options.
absl::StatusOr<std::unique_ptr<KvPolicy>> CreatePolicy(const PolicyOptions& options, int32_t num_layers,
                                                       int32_t group_size, ThreadPool* threads);

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_POLICY_H_
