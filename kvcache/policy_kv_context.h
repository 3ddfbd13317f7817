// File: kvcache/policy_kv_context.h
//
// The engine's KvContext (engine/kv_context.h) for one sequence, backed by a SequenceKv and driven by a
// KvPolicy: the transformer asks it what each layer attends to, and it answers with the runs of the blocks the
// policy selects. It also keeps the counters reviewers of the papers asked for.
//
//   HostAllocator host;
//   auto pool = CreateKvPagePool(config, options, /*max_tokens=*/32768, &host).value();
//   auto kv = PolicyKvContext::Create(config, options, pool.get(), ThreadPool::Default()).value();
//   model->Forward(prompt, kv.get(), false, &logits);
//
// Thread-safety: one sequence, one thread at a time.
#ifndef LIVEKV_KVCACHE_POLICY_KV_CONTEXT_H_
#define LIVEKV_KVCACHE_POLICY_KV_CONTEXT_H_

#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "common/allocator.h"
#include "engine/kv_context.h"
#include "engine/model_config.h"
#include "kvcache/policy.h"
#include "kvcache/sequence_kv.h"

namespace livekv {

// Per-layer counters, summed over decode steps (single-token chunks) and KV heads.
struct LayerCounters {
  int64_t steps = 0;               // decode steps seen
  int64_t head_steps = 0;          // steps x KV heads
  int64_t tokens_selected = 0;     // cached tokens attended
  int64_t bytes_selected = 0;      // their K and V bytes
  int64_t clusters_selected = 0;   // clusters attended (steps after the first with clusters)
  int64_t clusters_hit = 0;        // of those, also selected at the previous step
  double attention_mass = 0;       // sum over head-steps of the dense attention probability the selection covers
  int64_t mass_samples = 0;

  int64_t correction_checks = 0;   // speculative: KV heads whose query drift was checked
  int64_t corrections = 0;         // of those, re-selected with the current query
  double cosine_sum = 0;           // of the checked heads' mean query cosine (consecutive steps)

  double hit_rate() const { return clusters_selected > 0 ? double(clusters_hit) / clusters_selected : 0; }
  double correction_rate() const { return correction_checks > 0 ? double(corrections) / correction_checks : 0; }
  double mean_cosine() const { return correction_checks > 0 ? cosine_sum / correction_checks : 0; }
  double mean_mass() const { return mass_samples > 0 ? attention_mass / mass_samples : 0; }
  double tokens_per_head_step() const { return head_steps > 0 ? double(tokens_selected) / head_steps : 0; }
};

// The geometry of a model's sequences under `options` (page size, sink and KV dtype come from the policy).
KvGeometry GeometryFor(const ModelConfig& config, const PolicyOptions& options);

// A host page pool sized for `max_tokens` tokens of `config` in the policy's layout (with room for partially
// filled cluster pages). Host memory is committed lazily, so a large max_tokens costs only address space.
absl::StatusOr<std::unique_ptr<PagePool>> CreateKvPagePool(const ModelConfig& config, const PolicyOptions& options,
                                                           int64_t max_tokens, Allocator* allocator);

// Makes sure the bytes of the blocks a layer is about to attend are present in the sequence (a mirror of a
// remote session recalls them here). Called by PolicyKvContext::Select between selection and building runs.
class BlockFetcher {
 public:
  virtual ~BlockFetcher() = default;
  // Returns when every block of `selection` is present (waiting for prefetches in flight).
  virtual absl::Status EnsureResident(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) = 0;
  // Starts making `selection`'s blocks present without waiting (speculative recall for the next step). The
  // destinations are resolved before returning, so the sequence may change afterwards; the blocks themselves must
  // stay until the prefetch completes. Errors surface in a later EnsureResident or Drain.
  virtual absl::Status Prefetch(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) {
    return EnsureResident(kv, layer, selection);
  }
  // Waits for every prefetch in flight (before the sequence's blocks move, and at the end).
  virtual absl::Status Drain() { return absl::OkStatus(); }
};

class PolicyKvContext : public KvContext {
 public:
  // `pool` (pages of the policy's layout) must outlive the context; `threads` may be null.
  // INVALID_ARGUMENT for invalid options, or clusterkv with a sliding-window model (clusters have no positions).
  static absl::StatusOr<std::unique_ptr<PolicyKvContext>> Create(const ModelConfig& config,
                                                                 const PolicyOptions& options, PagePool* pool,
                                                                 ThreadPool* threads);
  // Serves an existing sequence (e.g. a mirror of a stored session). INVALID_ARGUMENT when its geometry is not
  // the one `config` and `options` imply.
  static absl::StatusOr<std::unique_ptr<PolicyKvContext>> Adopt(const ModelConfig& config,
                                                                const PolicyOptions& options,
                                                                std::unique_ptr<SequenceKv> kv, ThreadPool* threads);

  // Borrowed; null removes it.
  void set_block_fetcher(BlockFetcher* fetcher) { fetcher_ = fetcher; }

  // Whether multi-token chunks attend to their selection rather than densely; starts as the policy's
  // sparse_prefill. Services switch it per phase: documents are appended densely, questions may retrieve.
  void set_sparse_prefill(bool sparse) { sparse_prefill_ = sparse; }

  int64_t num_tokens() const override { return kv_->num_tokens(); }
  absl::Status Select(int layer, TensorView q, ContextKv* ctx) override;
  absl::Status Append(int layer, TensorView k, TensorView v) override;
  absl::Status Commit(int64_t n) override;
  void Rollback() override;

  // The committed tokens form a complete input (a prompt, a document): the policy may reorganise them now
  // (clusterkv clusters what is older than the recent window) instead of at the next decode step.
  absl::Status FinishAppend();

  // Every maintenance applied since the last call (clusterings in order, dropped pages summed), for a writer
  // that must apply the same changes to another copy of the sequence.
  Maintenance TakeMaintenanceLog();

  const std::vector<LayerCounters>& counters() const { return counters_; }
  // Wall time spent maintaining the cache's blocks (clustering, dropping) rather than selecting.
  double maintenance_seconds() const { return maintenance_seconds_; }
  const SequenceKv& sequence() const { return *kv_; }
  // For filling a mirror's blocks in place (a BlockFetcher); the context keeps ownership.
  SequenceKv* mutable_sequence() { return kv_.get(); }
  const KvPolicy& policy() const { return *policy_; }

 private:
  PolicyKvContext(const ModelConfig& config, std::unique_ptr<SequenceKv> kv, std::unique_ptr<KvPolicy> policy);
  void Count(int32_t layer, const ChunkQueries& q, const LayerSelection& sel);
  // Plans (k-means included) and applies a maintenance step; both count in maintenance_seconds().
  absl::Status Maintain(absl::FunctionRef<absl::StatusOr<Maintenance>()> make_plan);
  double AttentionMass(int32_t layer, int32_t head, const QueryGroup& q, const HeadSelection& sel) const;

  // Speculation state of one layer: the selection made with the previous decode step's query, and that query.
  struct Speculation {
    bool valid = false;
    LayerSelection selection;
    std::vector<float> q;                  // [num_heads][head_dim]
    std::vector<int32_t> clusters_before;  // per KV head: its cluster count when `selection` was made
  };
  absl::Status SelectSpeculative(int32_t layer, const ChunkQueries& q, LayerSelection* sel);

  const ModelConfig config_;
  std::unique_ptr<SequenceKv> kv_;
  BlockFetcher* fetcher_ = nullptr;
  std::vector<Speculation> speculation_;  // per layer
  Maintenance log_;
  std::unique_ptr<KvPolicy> policy_;
  bool chunk_started_ = false;
  bool sparse_prefill_ = false;
  double maintenance_seconds_ = 0;
  std::vector<LayerCounters> counters_;
  std::vector<std::vector<int32_t>> previous_clusters_;  // [layer * kv_heads + head]
};

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_POLICY_KV_CONTEXT_H_
