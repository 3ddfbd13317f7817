// File: common/shm/shm_segment.h
//
// One POSIX shared-memory segment mapped into this process (shm_open + mmap MAP_SHARED), as a move-only RAII
// object. The creating process ("owner") maps it read-write and unlinks its name on destruction; other processes
// open it by name read-only (O_RDONLY, PROT_READ) and only unmap.
//
//   LIVEKV_ASSIGN_OR_RETURN(ShmSegment seg, ShmSegment::Create("/livekv-42-ab12-0", 1 << 30, /*populate=*/true));
//   ... in another process:
//   LIVEKV_ASSIGN_OR_RETURN(ShmSegment view, ShmSegment::OpenReadOnly("/livekv-42-ab12-0", /*populate=*/true));
//   if (!view.OwnerAlive()) ...  // the creator exited (or crashed); the mapping stays valid, its bytes frozen
//
// Owner liveness. The owner holds an exclusive flock(2) on its descriptor for the segment's life; the kernel drops
// it when the owner closes the segment or dies, however it dies. A reader's OwnerAlive() tries a non-blocking shared
// lock on its own descriptor: refused means the owner still holds the segment. (flock locks belong to open file
// descriptions, so this works between two opens in one process too. Descriptors are close-on-exec, so a child the
// owner forks and execs does not inherit the lock.)
//
// Thread-safety: the accessors and OwnerAlive are safe from any thread; moving or destroying needs exclusive access.
#ifndef LIVEKV_COMMON_SHM_SHM_SEGMENT_H_
#define LIVEKV_COMMON_SHM_SHM_SEGMENT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace livekv {

class ShmSegment {
 public:
  ShmSegment() = default;
  ShmSegment(ShmSegment&& other) noexcept;
  ShmSegment& operator=(ShmSegment&& other) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();  // unmaps; the owner also unlinks the name (if not yet unlinked) and drops its lock

  // Creates `name` ("/x", no other '/', at most 255 characters) exclusively (O_CREAT|O_EXCL, mode 0600), sizes it
  // to `bytes` and maps it read-write. With `populate`, the mapping is pre-faulted (MAP_POPULATE) so that first
  // touches do not fault. ALREADY_EXISTS when the name is taken; INVALID_ARGUMENT for a bad name or bytes == 0;
  // RESOURCE_EXHAUSTED when the memory is short; other failures carry the errno text.
  static absl::StatusOr<ShmSegment> Create(const std::string& name, size_t bytes, bool populate);

  // Opens an existing segment read-only and maps all of it PROT_READ. NOT_FOUND when no segment has that name (for
  // a livekv channel: the creator runs on another host, or is gone); PERMISSION_DENIED when it belongs to another
  // user.
  static absl::StatusOr<ShmSegment> OpenReadOnly(const std::string& name, bool populate);

  bool valid() const { return data_ != nullptr; }
  const std::string& name() const { return name_; }
  uint8_t* data() const { return data_; }  // read-only memory unless owner()
  size_t size() const { return size_; }
  bool owner() const { return owner_; }

  // Owner only: removes the name now (the mapping stays). Idempotent.
  void Unlink();

  // Owner only: pre-faults bytes [offset, offset + bytes) of the mapping (allocates the tmpfs pages and fills this
  // process's page tables), for a caller that populates a large segment piece by piece in the background. The
  // contents are unchanged. RESOURCE_EXHAUSTED when /dev/shm is full.
  absl::Status Populate(size_t offset, size_t bytes);

  // Reader side: whether the segment's owner still holds it (see the file comment). Always true for the owner.
  bool OwnerAlive() const;

 private:
  void Reset();

  std::string name_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool owner_ = false;
  bool linked_ = false;
};

}  // namespace livekv

#endif  // LIVEKV_COMMON_SHM_SHM_SEGMENT_H_
