#include "kvcache/page_pool.h"

#include <iterator>
#include <limits>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace livekv {

// One entry: a run of pages under a key. Heap-allocated so that handles can point at it across table rehashes
// and after it leaves the table (deferred erase).
struct PagePool::Handle::Entry {
  Entry(Key key, uint32_t first_page, uint32_t num_pages, bool evictable)
      : key(key), first_page(first_page), num_pages(num_pages), evictable(evictable) {}

  // Immutable after construction: handles read them without the lock.
  const Key key;
  const uint32_t first_page;
  const uint32_t num_pages;
  const bool evictable;

  // Guarded by the pool's mu_. The entry is on the LRU list iff live && evictable && refs == 0.
  uint32_t refs = 0;
  bool live = true;  // In the pool's table (not erased or evicted).
  Entry* lru_prev = nullptr;
  Entry* lru_next = nullptr;
};

// ---- Handle ----

PagePool::Handle& PagePool::Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    entry_ = std::exchange(other.entry_, nullptr);
  }
  return *this;
}

PagePool::Key PagePool::Handle::key() const { return entry_->key; }
uint32_t PagePool::Handle::first_page() const { return entry_->first_page; }
uint32_t PagePool::Handle::num_pages() const { return entry_->num_pages; }
uint8_t* PagePool::Handle::data() const {
  return pool_->base_ + static_cast<size_t>(entry_->first_page) * pool_->page_bytes_;
}
size_t PagePool::Handle::bytes() const { return static_cast<size_t>(entry_->num_pages) * pool_->page_bytes_; }

void PagePool::Handle::Release() {
  if (entry_ == nullptr) return;
  pool_->Unpin(entry_);
  entry_ = nullptr;
  pool_ = nullptr;
}

// ---- PagePool ----

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::Create(Allocator* allocator, const Options& options) {
  if (allocator == nullptr) return absl::InvalidArgumentError("PagePool: allocator is null");
  if (options.page_bytes == 0) return absl::InvalidArgumentError("PagePool: page_bytes is 0");
  const size_t pages = options.capacity_bytes / options.page_bytes;
  if (pages == 0) {
    return absl::InvalidArgumentError(absl::StrCat("PagePool: capacity_bytes ", options.capacity_bytes,
                                                   " is less than one page of ", options.page_bytes, " bytes"));
  }
  if (pages > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("PagePool: ", pages, " pages of ", options.page_bytes,
                                                   " bytes is more than 2^32 - 1 pages"));
  }
  const size_t arena_bytes = pages * options.page_bytes;
  absl::StatusOr<void*> arena = allocator->Allocate(arena_bytes);
  if (!arena.ok()) {
    return absl::Status(arena.status().code(),
                        absl::StrCat("PagePool: arena of ", arena_bytes, " bytes (", pages, " pages of ",
                                     options.page_bytes, ") from ", MemoryKindName(allocator->kind()),
                                     " allocator: ", arena.status().message()));
  }
  return std::unique_ptr<PagePool>(
      new PagePool(allocator, options.page_bytes, static_cast<uint32_t>(pages), static_cast<uint8_t*>(*arena)));
}

PagePool::PagePool(Allocator* allocator, size_t page_bytes, uint32_t num_pages, uint8_t* base)
    : allocator_(allocator),
      page_bytes_(page_bytes),
      num_pages_(num_pages),
      base_(base),
      lru_head_(std::make_unique<Entry>(/*key=*/0, /*first_page=*/0, /*num_pages=*/0, /*evictable=*/false)) {
  absl::MutexLock lock(&mu_);
  lru_head_->lru_prev = lru_head_.get();
  lru_head_->lru_next = lru_head_.get();
  free_by_start_.emplace(0, num_pages_);
  free_by_length_.emplace(num_pages_, 0);
  free_pages_ = num_pages_;
}

PagePool::~PagePool() {
  {
    absl::MutexLock lock(&mu_);
    CHECK_EQ(pinned_entries_, 0u) << "PagePool destroyed with " << pinned_entries_ << " pinned entries ("
                                  << pinned_pages_ << " pages); every Handle must be released first";
    // With no pins there are no erased-but-pinned entries: the table holds every remaining entry.
    for (auto& [key, e] : table_) delete e;
    table_.clear();
  }
  allocator_->Free(base_, static_cast<size_t>(num_pages_) * page_bytes_);
}

absl::StatusOr<PagePool::Handle> PagePool::Insert(Key key, uint32_t num_pages, bool evictable) {
  if (num_pages == 0) {
    return absl::InvalidArgumentError(absl::StrCat("PagePool: Insert of key ", key, " with 0 pages"));
  }
  if (num_pages > num_pages_) {
    return absl::InvalidArgumentError(absl::StrCat("PagePool: Insert of key ", key, " asks for ", num_pages,
                                                   " pages; the pool has ", num_pages_));
  }
  absl::InlinedVector<Key, 8> evicted;
  std::shared_ptr<const std::function<void(Key)>> listener;
  absl::StatusOr<Handle> result;
  {
    absl::MutexLock lock(&mu_);
    if (table_.contains(key)) {
      return absl::AlreadyExistsError(absl::StrCat("PagePool: key ", key, " is already live"));
    }
    std::optional<uint32_t> first = AllocateRunLocked(num_pages);
    // Evicting cannot help when even every reclaimable page would not add up to num_pages; failing here keeps a
    // hopeless Insert (pool pinned full) from flushing the cache.
    if (!first.has_value() && free_pages_ + lru_pages_ >= num_pages) {
      while (lru_head_->lru_next != lru_head_.get()) {
        Entry* victim = lru_head_->lru_next;
        LruRemoveLocked(victim);
        victim->live = false;
        table_.erase(victim->key);
        evicted.push_back(victim->key);
        ++evictions_;
        // Before this eviction no free run was long enough, so only the run that absorbs the victim can be.
        const uint32_t first_page = victim->first_page, pages = victim->num_pages;
        delete victim;
        if (FreeRunLocked(first_page, pages) >= num_pages) {
          first = AllocateRunLocked(num_pages);
          CHECK(first.has_value());
          break;
        }
      }
    }
    if (!first.has_value()) {
      ++insert_failures_;
      const uint32_t largest = free_by_length_.empty() ? 0 : free_by_length_.rbegin()->first;
      result = absl::ResourceExhaustedError(absl::StrCat(
          "PagePool: no run of ", num_pages, " consecutive free pages for key ", key, ": asked for ", num_pages,
          " pages, free ", free_pages_, " pages (largest run ", largest, "), pinned ", pinned_pages_,
          " pages in ", pinned_entries_, " entries, owned ", owned_pages_, " pages, capacity ", num_pages_,
          " pages of ", page_bytes_, " bytes; evicted ", evicted.size(), " entries trying"));
    } else {
      Entry* e = new Entry(key, *first, num_pages, evictable);
      e->refs = 1;
      ++pinned_entries_;
      pinned_pages_ += num_pages;
      if (!evictable) owned_pages_ += num_pages;
      table_.emplace(key, e);
      result = Handle(this, e);
    }
    if (!evicted.empty()) listener = listener_;
  }
  if (listener != nullptr) {
    for (Key k : evicted) (*listener)(k);
  }
  return result;
}

std::optional<PagePool::Handle> PagePool::Lookup(Key key) {
  absl::MutexLock lock(&mu_);
  auto it = table_.find(key);
  if (it == table_.end()) return std::nullopt;
  Entry* e = it->second;
  if (e->refs++ == 0) {
    ++pinned_entries_;
    pinned_pages_ += e->num_pages;
    if (e->evictable) LruRemoveLocked(e);
  }
  return Handle(this, e);
}

bool PagePool::Erase(Key key) {
  absl::MutexLock lock(&mu_);
  auto it = table_.find(key);
  if (it == table_.end()) return false;
  Entry* e = it->second;
  table_.erase(it);
  e->live = false;
  if (!e->evictable) owned_pages_ -= e->num_pages;
  if (e->refs == 0) {
    if (e->evictable) LruRemoveLocked(e);
    DestroyLocked(e);
  } else {
    erased_pinned_pages_ += e->num_pages;  // The last Unpin frees it.
  }
  return true;
}

void PagePool::Unpin(Entry* e) {
  absl::MutexLock lock(&mu_);
  CHECK_GT(e->refs, 0u) << "PagePool: unpin of unpinned key " << e->key;
  if (--e->refs > 0) return;
  --pinned_entries_;
  pinned_pages_ -= e->num_pages;
  if (!e->live) {
    erased_pinned_pages_ -= e->num_pages;
    DestroyLocked(e);
  } else if (e->evictable) {
    LruAppendLocked(e);  // Most recently used.
  }
}

void PagePool::SetEvictionListener(std::function<void(Key)> listener) {
  auto next = listener ? std::make_shared<const std::function<void(Key)>>(std::move(listener)) : nullptr;
  {
    absl::MutexLock lock(&mu_);
    listener_.swap(next);
  }
  // The old listener (now in `next`) is destroyed here, outside the lock, in case its captures call the pool.
}

PagePool::Stats PagePool::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.capacity_bytes = static_cast<size_t>(num_pages_) * page_bytes_;
  s.free_bytes = free_pages_ * page_bytes_;
  s.used_bytes = s.capacity_bytes - s.free_bytes;
  s.pinned_bytes = pinned_pages_ * page_bytes_;
  s.erased_pinned_bytes = erased_pinned_pages_ * page_bytes_;
  s.largest_free_run_bytes = free_by_length_.empty() ? 0 : free_by_length_.rbegin()->first * page_bytes_;
  s.entries = table_.size();
  s.pinned_entries = pinned_entries_;
  s.evictions = evictions_;
  s.insert_failures = insert_failures_;
  return s;
}

std::optional<uint32_t> PagePool::AllocateRunLocked(uint32_t num_pages) {
  // Best fit: the shortest run of at least num_pages; among equals the lowest start.
  auto it = free_by_length_.lower_bound({num_pages, 0});
  if (it == free_by_length_.end()) return std::nullopt;
  const auto [length, start] = *it;
  free_by_length_.erase(it);
  free_by_start_.erase(start);
  if (length > num_pages) {
    free_by_start_.emplace(start + num_pages, length - num_pages);
    free_by_length_.emplace(length - num_pages, start + num_pages);
  }
  free_pages_ -= num_pages;
  return start;
}

uint32_t PagePool::FreeRunLocked(uint32_t first, uint32_t num_pages) {
  uint32_t start = first;
  uint32_t length = num_pages;
  auto next = free_by_start_.lower_bound(first);
  if (next != free_by_start_.end()) {
    CHECK_GE(next->first, first + num_pages) << "PagePool: freeing pages already free (double free)";
    if (next->first == first + num_pages) {
      length += next->second;
      free_by_length_.erase({next->second, next->first});
      next = free_by_start_.erase(next);
    }
  }
  if (next != free_by_start_.begin()) {
    auto prev = std::prev(next);
    CHECK_LE(prev->first + prev->second, first) << "PagePool: freeing pages already free (double free)";
    if (prev->first + prev->second == first) {
      start = prev->first;
      length += prev->second;
      free_by_length_.erase({prev->second, prev->first});
      free_by_start_.erase(prev);
    }
  }
  free_by_start_.emplace(start, length);
  free_by_length_.emplace(length, start);
  free_pages_ += num_pages;
  return length;
}

void PagePool::DestroyLocked(Entry* e) {
  FreeRunLocked(e->first_page, e->num_pages);
  delete e;
}

void PagePool::LruRemoveLocked(Entry* e) {
  e->lru_prev->lru_next = e->lru_next;
  e->lru_next->lru_prev = e->lru_prev;
  e->lru_prev = e->lru_next = nullptr;
  lru_pages_ -= e->num_pages;
}

void PagePool::LruAppendLocked(Entry* e) {
  Entry* head = lru_head_.get();
  e->lru_prev = head->lru_prev;
  e->lru_next = head;
  head->lru_prev->lru_next = e;
  head->lru_prev = e;
  lru_pages_ += e->num_pages;
}

}  // namespace livekv
