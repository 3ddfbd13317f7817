#include "common/shm/shm_arena.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"

namespace livekv {
namespace {

constexpr size_t kPopulateStep = size_t{64} << 20;

size_t RoundUp(size_t bytes) { return (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

bool ValidPrefix(absl::string_view prefix) {
  if (prefix.empty() || prefix.size() > 64) return false;
  for (char c : prefix) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<ShmArena::Prefault> ParsePrefault(absl::string_view name) {
  if (name == "none") return ShmArena::Prefault::kNone;
  if (name == "sync") return ShmArena::Prefault::kSync;
  if (name == "background") return ShmArena::Prefault::kBackground;
  return absl::InvalidArgumentError(
      absl::StrCat("shared-memory prefault mode \"", name, "\" is not one of none, sync, background"));
}

absl::StatusOr<std::unique_ptr<ShmArena>> ShmArena::Create(const Options& options) {
  if (!ValidPrefix(options.prefix)) {
    return absl::InvalidArgumentError(absl::StrCat("shared-memory prefix \"", options.prefix,
                                                   "\" must be 1 to 64 characters of [A-Za-z0-9_.]"));
  }
  absl::BitGen gen;
  std::string stem = absl::StrFormat("/%s-%d-%016x", options.prefix, ::getpid(), absl::Uniform<uint64_t>(gen));
  return std::unique_ptr<ShmArena>(new ShmArena(options, std::move(stem)));
}

ShmArena::ShmArena(const Options& options, std::string stem) : options_(options), stem_(std::move(stem)) {}

ShmArena::~ShmArena() {
  std::map<uintptr_t, std::unique_ptr<Slot>> slots;
  {
    absl::MutexLock lock(&mu_);
    slots.swap(slots_);
  }
  for (auto& [base, slot] : slots) {
    LOG(WARNING) << "ShmArena destroyed with region " << slot->segment.name() << " (" << slot->segment.size()
                 << " bytes) not freed; unlinking it";
    slot->cancel.store(true);
    if (slot->populate.joinable()) slot->populate.join();
  }
}

absl::StatusOr<void*> ShmArena::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("ShmArena: cannot allocate 0 bytes");
  std::string name;
  {
    absl::MutexLock lock(&mu_);
    name = absl::StrCat(stem_, "-", next_++);
  }
  const size_t size = RoundUp(bytes);
  absl::StatusOr<ShmSegment> segment = ShmSegment::Create(name, size, options_.prefault == Prefault::kSync);
  if (!segment.ok()) {
    return absl::Status(segment.status().code(), absl::StrCat("ShmArena: region of ", bytes, " bytes: ",
                                                               segment.status().message()));
  }
  auto slot = std::make_unique<Slot>();
  slot->segment = std::move(*segment);
  void* base = slot->segment.data();
  Slot* raw = slot.get();
  {
    absl::MutexLock lock(&mu_);
    if (options_.prefault == Prefault::kBackground) ++populating_;
    slots_.emplace(reinterpret_cast<uintptr_t>(base), std::move(slot));
  }
  if (options_.prefault == Prefault::kBackground) raw->populate = std::thread([this, raw] { PopulateInBackground(raw); });
  return base;
}

void ShmArena::PopulateInBackground(Slot* slot) {
  const size_t size = slot->segment.size();
  for (size_t at = 0; at < size && !slot->cancel.load(std::memory_order_relaxed); at += kPopulateStep) {
    const absl::Status s = slot->segment.Populate(at, std::min(kPopulateStep, size - at));
    if (!s.ok()) {
      LOG(ERROR) << "pre-faulting shared-memory region " << slot->segment.name() << " stopped at byte " << at
                 << " of " << size << ": " << s << " (touching the rest may fail with SIGBUS)";
      break;
    }
  }
  absl::MutexLock lock(&mu_);
  --populating_;
}

void ShmArena::Free(void* p, size_t bytes) {
  if (p == nullptr) return;
  std::unique_ptr<Slot> slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(reinterpret_cast<uintptr_t>(p));
    CHECK(it != slots_.end()) << "ShmArena::Free of " << p << ", which this arena did not allocate";
    CHECK_EQ(it->second->segment.size(), RoundUp(bytes)) << "ShmArena::Free of " << it->second->segment.name();
    slot = std::move(it->second);
    slots_.erase(it);
  }
  slot->cancel.store(true);
  if (slot->populate.joinable()) slot->populate.join();
  // ~ShmSegment unmaps, unlinks and closes.
}

std::optional<ShmArena::Region> ShmArena::Find(const void* p) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  absl::MutexLock lock(&mu_);
  auto it = slots_.upper_bound(a);
  if (it == slots_.begin()) return std::nullopt;
  --it;
  const ShmSegment& seg = it->second->segment;
  if (a >= it->first + seg.size()) return std::nullopt;
  return Region{seg.name(), seg.data(), seg.size()};
}

std::vector<ShmArena::Region> ShmArena::regions() const {
  absl::MutexLock lock(&mu_);
  std::vector<Region> out;
  for (const auto& [base, slot] : slots_) out.push_back({slot->segment.name(), slot->segment.data(), slot->segment.size()});
  return out;
}

void ShmArena::WaitPrefaulted() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &populating_));
}

int RemoveStaleSegments(absl::string_view prefix) {
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) return 0;
  const std::string head = absl::StrCat(prefix, "-");
  std::vector<std::string> stale;
  while (struct dirent* e = ::readdir(dir)) {
    const absl::string_view name(e->d_name);
    if (!absl::StartsWith(name, head)) continue;
    const std::vector<absl::string_view> parts = absl::StrSplit(name.substr(head.size()), '-');
    int pid = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &pid) || pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // the creator (or a process with its pid) runs
    const std::string shm_name = absl::StrCat("/", name);
    const int fd = ::shm_open(shm_name.c_str(), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) continue;
    const bool unowned = ::flock(fd, LOCK_SH | LOCK_NB) == 0;
    ::close(fd);
    if (unowned) stale.push_back(shm_name);
  }
  ::closedir(dir);
  int removed = 0;
  for (const std::string& name : stale) {
    if (::shm_unlink(name.c_str()) == 0) {
      LOG(INFO) << "removed stale shared-memory segment " << name << " (its creator is gone)";
      ++removed;
    }
  }
  return removed;
}

}  // namespace livekv
