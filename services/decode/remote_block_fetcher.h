// File: services/decode/remote_block_fetcher.h
//
// Recalls a session's blocks from the KV store into a local mirror, on a recall thread, the first time a layer
// needs them — or one step ahead, when the policy context prefetches the next step's speculative selection
// (FreeKV). The mirror was loaded index-only (KvStoreClient::LoadMirror without bytes): every block's pages are
// reserved in a lazily committed pool, so blocks never recalled cost no memory, and a recalled block lands in its
// own pages, so a recall for the next step never overwrites what the current step reads. Blocks that decode
// itself appended (the prompt's and generated tokens, clusters made of them) are local and never recalled.
//
// Thread-safety: EnsureResident, Prefetch, Drain and FetchEager are called by the decode thread; the recall
// thread only runs the channel's Fetch into destinations resolved beforehand.
#ifndef LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_
#define LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_

#include <deque>
#include <memory>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kvcache/policy_kv_context.h"
#include "services/channels/kv_channel.h"

namespace livekv {

struct FetchStats {
  int64_t recalled_bytes = 0;
  int64_t recalled_blocks = 0;
  double recall_seconds = 0;    // spent in the channel (on the recall thread)
  double blocked_seconds = 0;   // the decode thread waited for recalls (what speculation tries to hide)
  int64_t demanded_blocks = 0;  // remote blocks attended (EnsureResident)
  int64_t demand_misses = 0;    // of those, neither present nor being prefetched when needed
};

class RemoteBlockFetcher : public BlockFetcher {
 public:
  struct Options {
    // Keep only what each layer attends now: at a layer's EnsureResident, its present remote blocks outside the
    // selection are forgotten (recalled again when selected again), as a device cache holding one budget per layer
    // would. Off: a recalled block stays for the whole call (what the CPU mirror affords).
    bool resident_selection_only = false;
  };

  // `mirror` is the freshly loaded, index-only mirror; borrowed, it must outlive this. `channel` moves the bytes.
  RemoteBlockFetcher(SequenceKv* mirror, std::unique_ptr<KvChannel> channel, const Options& options);
  RemoteBlockFetcher(SequenceKv* mirror, std::unique_ptr<KvChannel> channel)
      : RemoteBlockFetcher(mirror, std::move(channel), Options{}) {}
  ~RemoteBlockFetcher() override;  // drains the recall thread

  // Recalls the sink and positional pages of every head now (before local tokens are appended into the last
  // page): all of them when `all_positional`, else just the last page of each head.
  absl::Status FetchEager(bool all_positional);

  absl::Status EnsureResident(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) override;
  absl::Status Prefetch(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) override;
  absl::Status Drain() override;

  FetchStats stats() const;
  std::string channel_name() const { return channel_->name(); }

 private:
  using Key = std::tuple<int32_t, int32_t, int, int64_t>;  // layer, head, kind, cluster index or first position
  struct Job {
    uint64_t id;
    std::vector<BlockDestination> blocks;
    std::vector<Key> keys;
  };
  bool IsRemote(int32_t layer, int32_t head, const BlockRef& b) const;
  static Key KeyOf(int32_t layer, int32_t head, const BlockRef& b) {
    return {layer, head, static_cast<int>(b.kind), b.kind == BlockRef::Kind::kPage ? b.first_position : b.index};
  }
  // Queues the remote blocks of `selection` not yet present or queued; returns the job id (0: nothing queued) and
  // the ids of jobs already carrying some of them.
  absl::StatusOr<uint64_t> Queue(const SequenceKv& kv, int32_t layer, const LayerSelection& selection,
                                 std::vector<uint64_t>* waiting_on, bool count_demand);
  absl::Status WaitFor(uint64_t job_id);
  // Forgets the present remote blocks of `layer` that `selection` does not name (Options::resident_selection_only).
  void ForgetUnselected(const SequenceKv& kv, int32_t layer, const LayerSelection& selection);
  void RecallLoop();

  SequenceKv* const mirror_;
  std::unique_ptr<KvChannel> channel_;
  const Options options_;
  const int64_t remote_tokens_;
  std::vector<int32_t> remote_clusters_;  // [layer * kv_heads + head]

  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, uint64_t> state_ ABSL_GUARDED_BY(mu_);  // 0: present; else the job carrying it
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_job_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t done_upto_ ABSL_GUARDED_BY(mu_) = 0;  // jobs complete in order
  absl::Status error_ ABSL_GUARDED_BY(mu_);      // the first failed job's error
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  FetchStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_
