#include "services/kvstore/cold_tier.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace livekv {
namespace {

constexpr uintptr_t kOsPage = 4096;

absl::Status ErrnoStatus(int e, absl::string_view what) {
  const std::string text = absl::StrCat(what, ": ", std::strerror(e));
  if (e == ENOSPC || e == EDQUOT || e == EFBIG) return absl::ResourceExhaustedError(text);
  if (e == ENOENT || e == ENOTDIR) return absl::InvalidArgumentError(text);
  return absl::InternalError(text);
}

// Gives the whole OS pages inside `run` back to the system; reads of them return zeros afterwards.
void Release(absl::Span<uint8_t> run) {
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(run.data()) + kOsPage - 1) & ~(kOsPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(run.data()) + run.size()) & ~(kOsPage - 1);
  if (end <= begin) return;
  void* p = reinterpret_cast<void*>(begin);
  // Shared memory (the ShmArena) frees its tmpfs pages only with MADV_REMOVE; private memory with MADV_DONTNEED.
  if (madvise(p, end - begin, MADV_REMOVE) == 0) return;
  if (madvise(p, end - begin, MADV_DONTNEED) != 0) {
    LOG(WARNING) << "cold tier: cannot release " << (end - begin) << " bytes: " << std::strerror(errno);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ColdTier>> ColdTier::Create(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("the cold tier needs a directory");
  int fd = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    // Filesystems without O_TMPFILE: a named file, unlinked at once.
    std::string path = dir + "/livekv-cold-XXXXXX";
    std::vector<char> name(path.begin(), path.end());
    name.push_back('\0');
    fd = mkostemp(name.data(), O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("creating a spill file in ", dir));
    unlink(name.data());
  }
  return std::unique_ptr<ColdTier>(new ColdTier(fd));
}

ColdTier::~ColdTier() { close(fd_); }

absl::Status ColdTier::Demote(RunKey key, absl::Span<uint8_t> run) {
  absl::MutexLock lock(&mu_);
  if (entries_.contains(key)) return absl::OkStatus();
  const Entry e{end_, static_cast<int64_t>(run.size())};
  for (size_t done = 0; done < run.size();) {
    const ssize_t n = pwrite(fd_, run.data() + done, run.size() - done, e.offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const absl::Status s = ErrnoStatus(n < 0 ? errno : ENOSPC, absl::StrCat("spilling ", run.size(), " bytes"));
      PunchLocked(Entry{e.offset, static_cast<int64_t>(done)});
      return s;
    }
    done += static_cast<size_t>(n);
  }
  end_ += e.bytes;
  entries_.emplace(key, e);
  Release(run);
  stats_.cold_runs += 1;
  stats_.cold_bytes += e.bytes;
  stats_.demoted_runs += 1;
  return absl::OkStatus();
}

absl::StatusOr<bool> ColdTier::Promote(RunKey key, absl::Span<uint8_t> run) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  const Entry e = it->second;
  CHECK_EQ(e.bytes, static_cast<int64_t>(run.size())) << "cold run " << key.second << " promoted into another span";
  for (size_t done = 0; done < run.size();) {
    const ssize_t n = pread(fd_, run.data() + done, run.size() - done, e.offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(n < 0 ? errno : EIO, absl::StrCat("reading back a cold run of ", e.bytes, " bytes"));
    done += static_cast<size_t>(n);
  }
  PunchLocked(e);
  entries_.erase(it);
  stats_.cold_runs -= 1;
  stats_.cold_bytes -= e.bytes;
  stats_.promoted_runs += 1;
  return true;
}

bool ColdTier::IsCold(RunKey key) const {
  absl::MutexLock lock(&mu_);
  return entries_.contains(key);
}

void ColdTier::Forget(RunKey key) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  PunchLocked(it->second);
  stats_.cold_runs -= 1;
  stats_.cold_bytes -= it->second.bytes;
  entries_.erase(it);
}

void ColdTier::PunchLocked(const Entry& e) {
  if (e.bytes > 0) (void)fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, e.offset, e.bytes);
}

ColdTierStats ColdTier::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace livekv
