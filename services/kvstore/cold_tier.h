// File: services/kvstore/cold_tier.h
//
// The KV store's cold tier: cluster runs of idle sessions spilled from the pool arena (the hot tier, the memory that
// Recall and the shm/UCX channels read) to an unlinked spill file, their arena memory given back to the system
// (madvise MADV_REMOVE on shared memory, MADV_DONTNEED on private memory: the whole 4 KiB pages inside the run).
// The run keeps its place in the pool, so a promotion copies the bytes back where they were and every location a
// reader was told stays valid. Prefetch (session_store.h, "Tiers and prefetch") promotes runs before they are asked
// for; a run asked for while cold is promoted on demand.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<ColdTier> tier, ColdTier::Create("/var/tmp"));
//   LIVEKV_RETURN_IF_ERROR(tier->Demote({pool_id, key}, run));   // run's memory reads as zeros from here
//   LIVEKV_ASSIGN_OR_RETURN(bool was_cold, tier->Promote({pool_id, key}, run));  // run's bytes are back
//
// The tier never decides when a run may be demoted: the caller guarantees that nobody reads the run between Demote
// and Promote (the store: the session's lock, no lease, no Recall in flight).
//
// Not with pinned readers. Releasing a run's memory gives its pages back to the system, and the promotion (and any
// later owner of the pages) writes fresh ones. A reader that pinned the arena's old pages for DMA (an RDMA memory
// registration without on-demand paging, cudaHostRegister of a worker's shared-memory mapping) keeps reading the old
// pages, so it would see stale bytes once the run is reused — under unchanged generations, since the generation
// table is not released. Enable a cold tier only where readers copy through their mappings (the CPU shm channel,
// UCX over TCP); livekv_kvstore leaves it off unless --cold_dir is given.
//
// Thread-safety: thread-safe; Demote and Promote of one key are serialised (a concurrent Promote waits for the
// first, then finds the run hot).
#ifndef LIVEKV_SERVICES_KVSTORE_COLD_TIER_H_
#define LIVEKV_SERVICES_KVSTORE_COLD_TIER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace livekv {

struct ColdTierStats {
  int64_t cold_runs = 0;   // now
  int64_t cold_bytes = 0;  // now
  int64_t demoted_runs = 0;   // since start
  int64_t promoted_runs = 0;  // since start
};

class ColdTier {
 public:
  using RunKey = std::pair<uint32_t, uint64_t>;  // pool id, the run's PagePool key

  // Creates an unlinked spill file in `dir`. INVALID_ARGUMENT / the errno's code when it cannot.
  static absl::StatusOr<std::unique_ptr<ColdTier>> Create(const std::string& dir);
  ~ColdTier();
  ColdTier(const ColdTier&) = delete;
  ColdTier& operator=(const ColdTier&) = delete;

  // Writes `run` to the spill file and releases its memory (reads of it return zeros until Promote). A key that is
  // already cold is left alone. RESOURCE_EXHAUSTED when the file cannot grow (the run stays hot).
  absl::Status Demote(RunKey key, absl::Span<uint8_t> run);
  // When `key` is cold: reads its bytes back into `run` (the same span it was demoted from), frees its file space
  // and returns true; false when it is hot. INTERNAL when the file cannot be read (the run stays cold).
  absl::StatusOr<bool> Promote(RunKey key, absl::Span<uint8_t> run);
  bool IsCold(RunKey key) const;
  // Drops `key`'s spilled bytes (its run was freed).
  void Forget(RunKey key);

  ColdTierStats stats() const;

 private:
  struct Entry {
    int64_t offset = 0;
    int64_t bytes = 0;
  };
  explicit ColdTier(int fd) : fd_(fd) {}
  void PunchLocked(const Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int fd_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<RunKey, Entry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t end_ ABSL_GUARDED_BY(mu_) = 0;  // the file's next free byte (space is punched out, never reused)
  ColdTierStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_COLD_TIER_H_
