#include "common/allocator.h"

#include <errno.h>
#include <sys/mman.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/logging.h"

namespace livekv {

absl::string_view MemoryKindName(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kHost:
      return "host";
    case MemoryKind::kPinnedHost:
      return "pinned_host";
    case MemoryKind::kSharedMemory:
      return "shared_memory";
    case MemoryKind::kDevice:
      return "device";
  }
  return "unknown";
}

absl::StatusOr<void*> HostAllocator::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("HostAllocator: cannot allocate 0 bytes");
  // MAP_NORESERVE keeps an unused pool free of swap reservation; a pre-faulted pool is committed anyway, so it
  // asks for the reservation honestly (strict overcommit then fails the mmap instead of a later touch).
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | (prefault_ ? MAP_POPULATE : MAP_NORESERVE);
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, /*fd=*/-1, /*offset=*/0);
  if (p == MAP_FAILED) {
    const int err = errno;
    const std::string what =
        absl::StrCat("HostAllocator: mmap of ", bytes, " bytes", prefault_ ? " (prefault)" : "");
    // ENOMEM covers both "no memory" and "no address space" (sizes past the user address range).
    if (err == ENOMEM || err == EAGAIN) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": ", std::strerror(err)));
    }
    return ErrnoStatus(what, err);
  }
  // mmap returns system-page-aligned memory, and system pages are multiples of 4096 on every supported target.
  CHECK_EQ(reinterpret_cast<uintptr_t>(p) % kArenaAlignment, 0u);
  return p;
}

void HostAllocator::Free(void* p, size_t bytes) {
  if (p == nullptr) return;
  // munmap fails only for arguments that did not come from Allocate: a broken caller invariant.
  PCHECK(::munmap(p, bytes) == 0) << "HostAllocator: munmap(" << p << ", " << bytes << ")";
}

}  // namespace livekv
