#include "common/shm/shm_segment.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/logging.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace livekv {
namespace {

absl::Status CheckName(const std::string& name) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos || name.size() > 255) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory name \"", name, "\" must be '/' then 1 to 254 characters without '/'"));
  }
  return absl::OkStatus();
}

}  // namespace

ShmSegment::ShmSegment(ShmSegment&& other) noexcept { *this = std::move(other); }

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::exchange(other.owner_, false);
    linked_ = std::exchange(other.linked_, false);
  }
  return *this;
}

ShmSegment::~ShmSegment() { Reset(); }

void ShmSegment::Reset() {
  if (data_ != nullptr) PCHECK(::munmap(data_, size_) == 0) << "munmap of shared-memory segment " << name_;
  if (owner_) Unlink();
  if (fd_ >= 0) ::close(fd_);  // drops the owner's lock
  fd_ = -1;
  data_ = nullptr;
  size_ = 0;
  owner_ = false;
  linked_ = false;
}

void ShmSegment::Unlink() {
  if (!owner_ || !linked_) return;
  if (::shm_unlink(name_.c_str()) != 0 && errno != ENOENT) {
    PLOG(WARNING) << "shm_unlink " << name_;
  }
  linked_ = false;
}

absl::StatusOr<ShmSegment> ShmSegment::Create(const std::string& name, size_t bytes, bool populate) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  if (bytes == 0) return absl::InvalidArgumentError(absl::StrCat("shared-memory segment ", name, " of 0 bytes"));
  ShmSegment seg;
  seg.name_ = name;
  seg.fd_ = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (seg.fd_ < 0) return ErrnoStatus(absl::StrCat("shm_open ", name), errno);
  seg.owner_ = true;
  seg.linked_ = true;
  // From here on a failure unlinks the name again (the destructor of `seg`).
  if (::flock(seg.fd_, LOCK_EX | LOCK_NB) != 0) return ErrnoStatus(absl::StrCat("flock ", name), errno);
  if (::ftruncate(seg.fd_, static_cast<off_t>(bytes)) != 0) {
    return ErrnoStatus(absl::StrCat("ftruncate ", name, " to ", bytes, " bytes"), errno);
  }
  if (populate) {
    // Allocate the tmpfs pages now: a full /dev/shm is then RESOURCE_EXHAUSTED here instead of a SIGBUS on some
    // later first touch (MAP_POPULATE alone is best effort and silent).
    const int err = ::posix_fallocate(seg.fd_, 0, static_cast<off_t>(bytes));
    if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
      return ErrnoStatus(absl::StrCat("allocating ", bytes, " bytes of shared-memory segment ", name), err);
    }
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), seg.fd_, 0);
  if (p == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap of ", bytes, " bytes of ", name), errno);
  seg.data_ = static_cast<uint8_t*>(p);
  seg.size_ = bytes;
  return seg;
}

absl::StatusOr<ShmSegment> ShmSegment::OpenReadOnly(const std::string& name, bool populate) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  ShmSegment seg;
  seg.name_ = name;
  seg.fd_ = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (seg.fd_ < 0) return ErrnoStatus(absl::StrCat("shm_open ", name, " read-only"), errno);
  struct stat st;
  if (::fstat(seg.fd_, &st) != 0) return ErrnoStatus(absl::StrCat("fstat ", name), errno);
  if (st.st_size <= 0) return absl::FailedPreconditionError(absl::StrCat("shared-memory segment ", name, " is empty"));
  const size_t bytes = static_cast<size_t>(st.st_size);
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), seg.fd_, 0);
  if (p == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap of ", bytes, " bytes of ", name, " read-only"), errno);
  seg.data_ = static_cast<uint8_t*>(p);
  seg.size_ = bytes;
  return seg;
}

absl::Status ShmSegment::Populate(size_t offset, size_t bytes) {
  CHECK(owner_) << "Populate of " << name_ << ", which this process did not create";
  CHECK_LE(offset + bytes, size_) << name_;
  if (bytes == 0) return absl::OkStatus();
  const int err = ::posix_fallocate(fd_, static_cast<off_t>(offset), static_cast<off_t>(bytes));
  if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    return ErrnoStatus(absl::StrCat("allocating bytes [", offset, ", ", offset + bytes, ") of ", name_), err);
  }
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  if (::madvise(data_ + begin, offset + bytes - begin, MADV_POPULATE_WRITE) != 0) {
    if (errno != EINVAL) return ErrnoStatus(absl::StrCat("prefaulting ", name_), errno);
    // Kernels before 5.14: a read of every page maps it (for tmpfs a read fault allocates, unlike anonymous memory).
    for (size_t at = begin; at < offset + bytes; at += page) {
      (void)*static_cast<volatile const uint8_t*>(data_ + at);
    }
  }
  return absl::OkStatus();
}

bool ShmSegment::OwnerAlive() const {
  if (owner_) return true;
  if (fd_ < 0) return false;
  if (::flock(fd_, LOCK_SH | LOCK_NB) == 0) {
    ::flock(fd_, LOCK_UN);
    return false;
  }
  return errno == EWOULDBLOCK;
}

}  // namespace livekv
