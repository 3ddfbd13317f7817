// File: common/shm/shm_arena.h
//
// An Allocator (MemoryKind::kSharedMemory) whose every region is its own POSIX shared-memory segment, so that
// another process on the host can map a pool's pages by name (the KV store's shared-memory channel,
// ARCHITECTURE.md §5). Pools ask for their arena once and keep it for their life, so segments are created rarely
// and reused for every copy: the pre-faulting below is paid once (performance.md §1.3: a fresh segment copies ~50x
// slower than a pre-faulted one).
//
//   ShmArena arena;  // names "/livekv-<pid>-<random>-<n>"
//   LIVEKV_ASSIGN_OR_RETURN(void* p, arena.Allocate(size_t{1} << 30));
//   std::optional<ShmArena::Region> r = arena.Find(p);   // r->name is what a reader opens
//   arena.Free(p, size_t{1} << 30);                      // unmaps and unlinks
//
// Segments: created O_CREAT|O_EXCL with mode 0600 (readers must run as the same user), sized exactly to the
// request rounded up to kArenaAlignment, mapped MAP_SHARED read-write; zero-filled when new. Named
// "/<prefix>-<pid>-<16 hex random>-<n>": unique per arena, and the pid lets a later process recognise segments
// left behind by a crash (RemoveStaleSegments).
//
// Pre-faulting (Options::prefault):
//   kSync        Allocate allocates the segment's pages and populates the mapping before returning
//                (posix_fallocate + MAP_POPULATE): a full /dev/shm fails the Allocate, and no copy ever faults.
//                Costs ~0.3-3 s per GiB on a VM.
//   kBackground  Allocate returns at once; a thread per region populates it in 64 MiB steps (the same two calls).
//                The region is usable meanwhile (a touched page simply faults in). For a store whose large pools
//                are created on its first session: the call is not held up for seconds.
//   kNone        pages are faulted in by first use (tests).
//
// Crash cleanup: Free (and the arena's destructor) unlink; a process killed before that leaves its segments in
// /dev/shm. RemoveStaleSegments (the store runs it at start-up) removes those whose creator is gone.
//
// Thread-safety: thread-safe.
#ifndef LIVEKV_COMMON_SHM_SHM_ARENA_H_
#define LIVEKV_COMMON_SHM_SHM_ARENA_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "common/shm/shm_segment.h"

namespace livekv {

class ShmArena final : public Allocator {
 public:
  enum class Prefault { kNone, kSync, kBackground };
  struct Options {
    std::string prefix = "livekv";  // [A-Za-z0-9_.] only, at most 64 characters
    Prefault prefault = Prefault::kSync;
  };

  // INVALID_ARGUMENT for a bad prefix.
  static absl::StatusOr<std::unique_ptr<ShmArena>> Create(const Options& options);
  ~ShmArena() override;  // stops background pre-faulting; unlinks and unmaps regions not yet freed (logged)

  MemoryKind kind() const override { return MemoryKind::kSharedMemory; }
  // RESOURCE_EXHAUSTED when /dev/shm cannot hold `bytes` (kSync) or the descriptors run out.
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* p, size_t bytes) override;

  struct Region {
    std::string name;  // for shm_open, "/livekv-..."
    uint8_t* base = nullptr;
    size_t bytes = 0;  // the segment's size
  };
  // The region containing `p`, if any.
  std::optional<Region> Find(const void* p) const;
  std::vector<Region> regions() const;

  // Blocks until every region's background pre-faulting has finished (no-op for the other modes).
  void WaitPrefaulted();

  // "/<prefix>-<pid>-<random>": every segment name of this arena starts with it.
  const std::string& name_stem() const { return stem_; }

 private:
  struct Slot {
    ShmSegment segment;
    std::thread populate;
    std::atomic<bool> cancel{false};
  };
  ShmArena(const Options& options, std::string stem);
  void PopulateInBackground(Slot* slot);

  const Options options_;
  const std::string stem_;
  mutable absl::Mutex mu_;
  std::map<uintptr_t, std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);  // by base address
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
  int populating_ ABSL_GUARDED_BY(mu_) = 0;
};

// "none", "sync", "background" (INVALID_ARGUMENT otherwise, naming the value).
absl::StatusOr<ShmArena::Prefault> ParsePrefault(absl::string_view name);

// Unlinks the segments "/<prefix>-<pid>-..." that a crashed process left behind: those whose creator neither holds
// them (nobody holds the owner's flock, see shm_segment.h) nor runs (no process has that pid). Both tests must
// agree, so a live creator's segments are never removed even across pid namespaces, and a reused pid only delays
// the removal. Returns how many were removed. Best effort: only /dev/shm is scanned (glibc's shm_open directory).
int RemoveStaleSegments(absl::string_view prefix = "livekv");

}  // namespace livekv

#endif  // LIVEKV_COMMON_SHM_SHM_ARENA_H_
