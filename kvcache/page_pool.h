// File: kvcache/page_pool.h
//
// A pool of fixed-size pages carved from one arena, handing out runs of *consecutive* pages under keys, with
// pinned-handle semantics (LevelDB's Cache). A KV cluster is stored as one run of pages so that recalling it is
// one large copy (ARCHITECTURE.md §3). Page i lives at base() + i * page_bytes(), so a page index means the same
// thing to another process that maps the same arena.
//
//   HostAllocator host;
//   PagePool::Options options;
//   options.page_bytes = 16384;
//   options.capacity_bytes = size_t{1} << 30;
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, PagePool::Create(&host, options));
//   const PagePool::Key key = pool->NewKey();
//   LIVEKV_ASSIGN_OR_RETURN(PagePool::Handle h, pool->Insert(key, /*num_pages=*/4, /*evictable=*/true));
//   std::memcpy(h.data(), src, h.bytes());
//   h.Release();                                   // or let it go out of scope
//   if (std::optional<PagePool::Handle> hit = pool->Lookup(key)) Use(hit->data(), hit->bytes());
//
// Entries are either evictable (cache entries: dropped, least recently used first, when unpinned and space is
// needed) or owned (only Erase frees them). A pinned entry (one with a live Handle) is never evicted and its pages
// are never reused; erasing it is deferred until its last pin is released.
//
// Free space is a set of coalesced runs indexed by start and by (length, start). Insert picks the run by best
// fit (the shortest free run that is long enough; among equals, the lowest address) and takes pages from its
// start: this keeps long runs whole for long clusters. Insert and Erase are O(log R) in the number of free runs
// R, plus the evictions an Insert needs; Lookup and Release are O(1) (a hash probe and list links).
//
// Eviction is LRU over unpinned evictable entries. An entry's recency is the time its last pin was released
// (LevelDB's order): an Insert or Lookup makes it the most recent once the handle is released. Because runs must
// be consecutive, Insert evicts LRU entries one at a time until some free run is long enough; evicted neighbours
// that are not adjacent do not help, so under fragmentation an Insert may evict more than num_pages pages.
//
// Thread-safety: all methods are thread-safe (one mutex). Handles may be released or destroyed on any thread.
// The pool must outlive its handles, and the allocator must outlive the pool.
#ifndef LIVEKV_KVCACHE_PAGE_POOL_H_
#define LIVEKV_KVCACHE_PAGE_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"

namespace livekv {

class PagePool {
 public:
  struct Options {
    size_t page_bytes = 0;
    size_t capacity_bytes = 0;  // Rounded down to whole pages.
  };

  // Allocates the arena (one Allocate(num_pages * page_bytes) call) and returns an empty pool.
  // `allocator` is borrowed and must outlive the pool, which frees the arena through it on destruction.
  // INVALID_ARGUMENT for page_bytes == 0, capacity below one page, or more than 2^32 - 1 pages;
  // the allocator's error (RESOURCE_EXHAUSTED when memory is short) if the arena cannot be allocated.
  static absl::StatusOr<std::unique_ptr<PagePool>> Create(Allocator* allocator, const Options& options);

  // REQUIRES: no outstanding handles (CHECKed). Frees every entry and the arena.
  ~PagePool();

  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  using Key = uint64_t;

  // A key unique within this pool: a counter starting at 1, never reused. Callers that also choose keys
  // themselves must keep them apart from these (Insert reports a clash as ALREADY_EXISTS).
  Key NewKey() { return next_key_.fetch_add(1, std::memory_order_relaxed); }

  // RAII pin of one entry: while a Handle is valid its pages stay allocated to the entry and addressable, and
  // are neither evicted nor reused (even if the entry is erased meanwhile). Move-only; the destructor or
  // Release() unpins. The accessors read immutable fields and need no lock.
  // Thread-safety: a Handle is not itself synchronised (one owner at a time), but unpinning takes the pool's
  // lock, so handles of one pool may be released concurrently from any threads.
  class Handle {
   public:
    Handle() = default;
    Handle(Handle&& other) noexcept : pool_(std::exchange(other.pool_, nullptr)),
                                      entry_(std::exchange(other.entry_, nullptr)) {}
    Handle& operator=(Handle&& other) noexcept;
    ~Handle() { Release(); }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    bool valid() const { return entry_ != nullptr; }

    // REQUIRES for the accessors below: valid().
    Key key() const;
    uint32_t first_page() const;
    uint32_t num_pages() const;
    uint8_t* data() const;  // base() + first_page() * page_bytes().
    size_t bytes() const;   // num_pages() * page_bytes().

    // Unpins; the handle becomes invalid. No-op on an invalid handle.
    void Release();

   private:
    friend class PagePool;
    struct Entry;
    Handle(PagePool* pool, Entry* entry) : pool_(pool), entry_(entry) {}

    PagePool* pool_ = nullptr;
    Entry* entry_ = nullptr;
  };

  // Reserves num_pages consecutive pages for `key` and returns them pinned. Contents are uninitialised (they
  // may hold an evicted entry's bytes). The insert counts as a use for LRU order.
  //   evictable = true: a cache entry; the pool may drop it once it is unpinned and space is needed.
  //   evictable = false: owned storage; only Erase frees it.
  // ALREADY_EXISTS if `key` is live (an erased-but-pinned key may be inserted again: a new entry).
  // INVALID_ARGUMENT for num_pages == 0 or num_pages > this->num_pages().
  // RESOURCE_EXHAUSTED (naming the pages asked for, free, pinned and owned) if no run of num_pages consecutive
  // free pages exists even after evicting every unpinned evictable entry. When even the free pages plus the
  // evictable ones are fewer than num_pages, the Insert fails without evicting; otherwise it evicts in LRU order
  // until a run fits, so a failure caused by fragmentation may have evicted entries (reported to the listener).
  absl::StatusOr<Handle> Insert(Key key, uint32_t num_pages, bool evictable);

  // Pins the live entry for `key`; std::nullopt when absent (never inserted, erased, or evicted).
  std::optional<Handle> Lookup(Key key);

  // Removes `key`: Lookup no longer finds it. Its pages are freed now if it is unpinned, otherwise when its last
  // pin is released (deferred erase). Erasing an absent key is a no-op. Returns whether the key was live.
  bool Erase(Key key);

  // Sets the function called with the key of each entry dropped by eviction (never for Erase). It is called on
  // the thread of the Insert that evicted, after the pool's lock is released and before that Insert returns, so
  // it may call back into the pool. An Insert racing with SetEvictionListener may still call the old listener.
  // An empty function removes the listener.
  void SetEvictionListener(std::function<void(Key)> listener);

  // Exact accounting. Every page is in exactly one of: free, a live entry, an erased-but-pinned entry; so
  // used_bytes = live + erased-but-pinned = capacity_bytes - free_bytes.
  struct Stats {
    size_t capacity_bytes = 0;
    size_t used_bytes = 0;
    size_t pinned_bytes = 0;          // Pages of entries with at least one pin (live or erased).
    size_t erased_pinned_bytes = 0;   // Pages of erased entries waiting for their last pin.
    size_t free_bytes = 0;
    size_t largest_free_run_bytes = 0;
    uint64_t entries = 0;             // Live entries (those Lookup can find).
    uint64_t pinned_entries = 0;      // Entries with at least one pin, live or erased.
    uint64_t evictions = 0;           // Entries dropped by eviction since creation.
    uint64_t insert_failures = 0;     // Inserts that failed with RESOURCE_EXHAUSTED since creation.
  };
  Stats stats() const;

  size_t page_bytes() const { return page_bytes_; }
  uint32_t num_pages() const { return num_pages_; }
  uint8_t* base() const { return base_; }
  MemoryKind memory_kind() const { return allocator_->kind(); }

 private:
  using Entry = Handle::Entry;

  PagePool(Allocator* allocator, size_t page_bytes, uint32_t num_pages, uint8_t* base);

  // Unpins `e` (Handle::Release); frees it when it was the last pin of an erased entry.
  void Unpin(Entry* e);

  // Takes num_pages from the best-fitting free run; returns its first page, or nullopt if no run is long enough.
  std::optional<uint32_t> AllocateRunLocked(uint32_t num_pages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns [first, first + num_pages) to the free set, merging with free neighbours; returns the length of the
  // merged run that now contains those pages.
  uint32_t FreeRunLocked(uint32_t first, uint32_t num_pages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees an unpinned entry's pages and deletes it. REQUIRES: e->refs == 0 and e is off the table and the LRU.
  void DestroyLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void LruRemoveLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LruAppendLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Allocator* const allocator_;
  const size_t page_bytes_;
  const uint32_t num_pages_;
  uint8_t* const base_;
  std::atomic<Key> next_key_{1};

  mutable absl::Mutex mu_;
  // Live entries. Entries are heap nodes owned by the pool: in table_ while live, then (if still pinned) only
  // reachable from their handles until the last Unpin deletes them.
  absl::flat_hash_map<Key, Entry*> table_ ABSL_GUARDED_BY(mu_);
  // Free runs, coalesced (no two adjacent): start -> length, and (length, start) for best fit.
  absl::btree_map<uint32_t, uint32_t> free_by_start_ ABSL_GUARDED_BY(mu_);
  absl::btree_set<std::pair<uint32_t, uint32_t>> free_by_length_ ABSL_GUARDED_BY(mu_);
  // Dummy head of a circular list of the live, evictable, unpinned entries; lru_head_->lru_next is the least
  // recently used. The list links are guarded by mu_. (A unique_ptr only because Entry is incomplete here.)
  const std::unique_ptr<Entry> lru_head_;
  // Shared so that an evicting Insert can take a reference under the lock and call it after unlocking.
  std::shared_ptr<const std::function<void(Key)>> listener_ ABSL_GUARDED_BY(mu_);

  // Page and entry counters (see Stats).
  uint64_t free_pages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pinned_pages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t erased_pinned_pages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t lru_pages_ ABSL_GUARDED_BY(mu_) = 0;  // Pages of the entries on the LRU list.
  uint64_t owned_pages_ ABSL_GUARDED_BY(mu_) = 0;  // Pages of live non-evictable entries.
  uint64_t pinned_entries_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t insert_failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_PAGE_POOL_H_
