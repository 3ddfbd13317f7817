// File: common/allocator.h
//
// Sources of large memory regions ("arenas") from which pools carve pages. The pool asks once, at creation,
// for its whole capacity, so an Allocator is called rarely and may be slow (mmap, cudaHostAlloc, cudaMalloc).
//
//   HostAllocator host;
//   LIVEKV_ASSIGN_OR_RETURN(void* arena, host.Allocate(size_t{1} << 30));
//   ...
//   host.Free(arena, size_t{1} << 30);
//
// Implementations: HostAllocator (here). A POSIX shared-memory arena, CUDA pinned host memory and CUDA device
// memory live in their own targets, behind this interface, so core types never #ifdef on the platform.
#ifndef LIVEKV_COMMON_ALLOCATOR_H_
#define LIVEKV_COMMON_ALLOCATOR_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace livekv {

// Where an arena's bytes live; decides which copy engine can reach them.
enum class MemoryKind { kHost, kPinnedHost, kSharedMemory, kDevice };

// "host", "pinned_host", "shared_memory", "device".
absl::string_view MemoryKindName(MemoryKind kind);

// Every region returned by Allocator::Allocate is aligned to at least this many bytes.
inline constexpr size_t kArenaAlignment = 4096;

// Source of large memory regions (arenas) for pools.
// Thread-safety: implementations are thread-safe.
class Allocator {
 public:
  virtual ~Allocator() = default;

  virtual MemoryKind kind() const = 0;

  // Returns a region of at least `bytes` bytes, aligned to kArenaAlignment, owned by the caller until passed to
  // Free. Contents are unspecified (HostAllocator's are zero). INVALID_ARGUMENT for bytes == 0;
  // RESOURCE_EXHAUSTED, naming the size, when the memory is unavailable.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;

  // Returns a region to the allocator.
  // REQUIRES: p came from Allocate(bytes) of this allocator, with the same `bytes`, and is not yet freed.
  virtual void Free(void* p, size_t bytes) = 0;
};

// Plain host memory from anonymous private mmap (MAP_NORESERVE): pages are committed on first touch, so a large
// pool costs nothing until it is used, and untouched pages read as zero. With `prefault`, the mapping is
// populated up front (MAP_POPULATE, without MAP_NORESERVE) so that first touches do not fault on the hot path;
// population is best effort (the kernel does not fail the mmap when it cannot populate every page).
// Thread-safety: thread-safe (stateless apart from the flag).
class HostAllocator : public Allocator {
 public:
  explicit HostAllocator(bool prefault = false) : prefault_(prefault) {}

  MemoryKind kind() const override { return MemoryKind::kHost; }
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* p, size_t bytes) override;

  bool prefault() const { return prefault_; }

 private:
  const bool prefault_;
};

}  // namespace livekv

#endif  // LIVEKV_COMMON_ALLOCATOR_H_
