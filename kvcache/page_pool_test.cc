#include "kvcache/page_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Handle = PagePool::Handle;
using Key = PagePool::Key;

constexpr size_t kPage = 64;  // Small pages keep pattern writes cheap; the pool does not care about the size.

// Wraps HostAllocator to count calls, report a chosen kind, and fail on demand.
class FakeAllocator : public Allocator {
 public:
  explicit FakeAllocator(MemoryKind kind = MemoryKind::kHost) : kind_(kind) {}
  MemoryKind kind() const override { return kind_; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    ++allocate_calls;
    last_allocate_bytes = bytes;
    if (fail) return absl::ResourceExhaustedError("fake allocator out of memory");
    absl::StatusOr<void*> p = host_.Allocate(bytes);
    if (p.ok()) last_allocated = *p;
    return p;
  }
  void Free(void* p, size_t bytes) override {
    ++free_calls;
    last_freed = p;
    last_free_bytes = bytes;
    host_.Free(p, bytes);
  }

  bool fail = false;
  int allocate_calls = 0;
  int free_calls = 0;
  size_t last_allocate_bytes = 0;
  size_t last_free_bytes = 0;
  void* last_allocated = nullptr;
  void* last_freed = nullptr;

 private:
  const MemoryKind kind_;
  HostAllocator host_;
};

std::unique_ptr<PagePool> MakePool(Allocator* allocator, uint32_t pages, size_t page_bytes = kPage) {
  PagePool::Options options;
  options.page_bytes = page_bytes;
  options.capacity_bytes = pages * page_bytes;
  absl::StatusOr<std::unique_ptr<PagePool>> pool = PagePool::Create(allocator, options);
  CHECK(pool.ok()) << pool.status();
  return *std::move(pool);
}

Handle MustInsert(PagePool& pool, Key key, uint32_t pages, bool evictable) {
  absl::StatusOr<Handle> h = pool.Insert(key, pages, evictable);
  CHECK(h.ok()) << h.status();
  return *std::move(h);
}

// A byte pattern that differs between tags (entry ids or keys) and along the run.
uint8_t PatternByte(uint64_t tag, size_t i) {
  return static_cast<uint8_t>((tag * 0x9E3779B97F4A7C15ull >> 56) ^ (i * 31 + tag));
}
void WritePattern(const Handle& h, uint64_t tag) {
  for (size_t i = 0; i < h.bytes(); ++i) h.data()[i] = PatternByte(tag, i);
}
bool PatternIntact(const Handle& h, uint64_t tag) {
  for (size_t i = 0; i < h.bytes(); ++i) {
    if (h.data()[i] != PatternByte(tag, i)) return false;
  }
  return true;
}

// ---- Creation ----

TEST(PagePoolCreateTest, RejectsBadOptions) {
  FakeAllocator allocator;
  PagePool::Options options;
  options.page_bytes = 0;
  options.capacity_bytes = 4096;
  EXPECT_EQ(PagePool::Create(&allocator, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.page_bytes = 4096;
  options.capacity_bytes = 0;
  EXPECT_EQ(PagePool::Create(&allocator, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.capacity_bytes = 4095;
  absl::Status s = PagePool::Create(&allocator, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("4095"));
  options.page_bytes = 1;
  options.capacity_bytes = size_t{1} << 32;  // 2^32 pages: one too many for a uint32_t page index.
  EXPECT_EQ(PagePool::Create(&allocator, options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PagePool::Create(nullptr, options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator.allocate_calls, 0);
}

TEST(PagePoolCreateTest, RoundsCapacityDownAndOwnsOneArena) {
  FakeAllocator allocator(MemoryKind::kPinnedHost);
  {
    PagePool::Options options;
    options.page_bytes = 4096;
    options.capacity_bytes = 10 * 4096 + 4095;
    absl::StatusOr<std::unique_ptr<PagePool>> pool = PagePool::Create(&allocator, options);
    ASSERT_TRUE(pool.ok()) << pool.status();
    EXPECT_EQ((*pool)->num_pages(), 10u);
    EXPECT_EQ((*pool)->page_bytes(), 4096u);
    EXPECT_EQ((*pool)->memory_kind(), MemoryKind::kPinnedHost);
    EXPECT_EQ((*pool)->base(), allocator.last_allocated);
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*pool)->base()) % kArenaAlignment, 0u);
    EXPECT_EQ(allocator.allocate_calls, 1);
    EXPECT_EQ(allocator.last_allocate_bytes, 10u * 4096);
    const PagePool::Stats s = (*pool)->stats();
    EXPECT_EQ(s.capacity_bytes, 10u * 4096);
    EXPECT_EQ(s.free_bytes, 10u * 4096);
    EXPECT_EQ(s.largest_free_run_bytes, 10u * 4096);
    EXPECT_EQ(s.used_bytes, 0u);
    EXPECT_EQ(s.entries, 0u);
    Handle h = MustInsert(**pool, (*pool)->NewKey(), 3, /*evictable=*/false);  // Left live on destruction.
    h.Release();
    EXPECT_EQ(allocator.free_calls, 0);
  }
  EXPECT_EQ(allocator.allocate_calls, 1);
  EXPECT_EQ(allocator.free_calls, 1);
  EXPECT_EQ(allocator.last_freed, allocator.last_allocated);
  EXPECT_EQ(allocator.last_free_bytes, 10u * 4096);
}

TEST(PagePoolCreateTest, AllocatorFailureIsResourceExhausted) {
  FakeAllocator allocator;
  allocator.fail = true;
  PagePool::Options options;
  options.page_bytes = 4096;
  options.capacity_bytes = 8 * 4096;
  absl::Status s = PagePool::Create(&allocator, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("32768"));
}

TEST(PagePoolCreateTest, HugeHostArenaIsResourceExhaustedNotACrash) {
  HostAllocator allocator;
  PagePool::Options options;
  options.page_bytes = size_t{1} << 30;
  options.capacity_bytes = size_t{1} << 60;  // 2^30 pages: a valid count, an impossible arena.
  EXPECT_EQ(PagePool::Create(&allocator, options).status().code(), absl::StatusCode::kResourceExhausted);
}

// ---- Basics ----

TEST(PagePoolTest, NewKeyIsUniqueAcrossThreads) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 4);
  std::vector<std::vector<Key>> keys(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) keys[t].push_back(pool->NewKey());
    });
  }
  for (auto& th : threads) th.join();
  std::vector<Key> all;
  for (auto& k : keys) all.insert(all.end(), k.begin(), k.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end());
  EXPECT_GE(all.front(), 1u);
}

TEST(PagePoolTest, InsertLookupErase) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 16);
  const Key key = pool->NewKey();
  {
    Handle h = MustInsert(*pool, key, 3, /*evictable=*/true);
    ASSERT_TRUE(h.valid());
    EXPECT_EQ(h.key(), key);
    EXPECT_EQ(h.num_pages(), 3u);
    EXPECT_EQ(h.bytes(), 3 * kPage);
    EXPECT_EQ(h.data(), pool->base() + h.first_page() * kPage);
    WritePattern(h, key);
  }
  std::optional<Handle> hit = pool->Lookup(key);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->key(), key);
  EXPECT_EQ(hit->num_pages(), 3u);
  EXPECT_TRUE(PatternIntact(*hit, key));
  hit.reset();
  EXPECT_FALSE(pool->Lookup(key + 100).has_value());

  EXPECT_TRUE(pool->Erase(key));
  EXPECT_FALSE(pool->Lookup(key).has_value());
  EXPECT_FALSE(pool->Erase(key));  // Absent: a no-op.
  const PagePool::Stats s = pool->stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.free_bytes, 16 * kPage);
  EXPECT_EQ(s.largest_free_run_bytes, 16 * kPage);
}

TEST(PagePoolTest, HandleMoveAndRelease) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 8);
  Handle empty;
  EXPECT_FALSE(empty.valid());
  empty.Release();  // No-op.

  const Key a = pool->NewKey(), b = pool->NewKey();
  Handle ha = MustInsert(*pool, a, 1, true);
  Handle moved(std::move(ha));
  EXPECT_FALSE(ha.valid());  // NOLINT(bugprone-use-after-move): moved-from handles are documented invalid.
  EXPECT_TRUE(moved.valid());
  EXPECT_EQ(pool->stats().pinned_entries, 1u);

  Handle hb = MustInsert(*pool, b, 2, true);
  EXPECT_EQ(pool->stats().pinned_entries, 2u);
  moved = std::move(hb);  // Releases a's pin, takes b's.
  EXPECT_EQ(moved.key(), b);
  EXPECT_EQ(pool->stats().pinned_entries, 1u);
  EXPECT_EQ(pool->stats().pinned_bytes, 2 * kPage);
  Handle& self = moved;
  moved = std::move(self);  // Self-move keeps the pin.
  EXPECT_TRUE(moved.valid());
  EXPECT_EQ(pool->stats().pinned_entries, 1u);

  // Two pins on one entry: the entry stays pinned until both are released.
  std::optional<Handle> second = pool->Lookup(b);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(pool->stats().pinned_entries, 1u);
  moved.Release();
  moved.Release();  // Idempotent.
  EXPECT_FALSE(moved.valid());
  EXPECT_EQ(pool->stats().pinned_entries, 1u);
  second->Release();
  EXPECT_EQ(pool->stats().pinned_entries, 0u);
  EXPECT_EQ(pool->stats().pinned_bytes, 0u);
}

TEST(PagePoolTest, DeferredEraseKeepsPinnedPagesUntilRelease) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 4);
  const Key key = pool->NewKey();
  Handle h = MustInsert(*pool, key, 4, /*evictable=*/true);
  WritePattern(h, key);

  EXPECT_TRUE(pool->Erase(key));
  EXPECT_FALSE(pool->Lookup(key).has_value());
  EXPECT_FALSE(pool->Erase(key));
  PagePool::Stats s = pool->stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.used_bytes, 4 * kPage);
  EXPECT_EQ(s.erased_pinned_bytes, 4 * kPage);
  EXPECT_EQ(s.pinned_bytes, 4 * kPage);
  EXPECT_EQ(s.pinned_entries, 1u);
  EXPECT_EQ(s.free_bytes, 0u);

  // The pages are not reused while pinned: every insert fails, and the data stays intact.
  absl::StatusOr<Handle> other = pool->Insert(pool->NewKey(), 1, /*evictable=*/true);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(PatternIntact(h, key));

  h.Release();
  s = pool->stats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.erased_pinned_bytes, 0u);
  EXPECT_EQ(s.pinned_entries, 0u);
  EXPECT_EQ(s.free_bytes, 4 * kPage);
  EXPECT_TRUE(pool->Insert(pool->NewKey(), 4, true).ok());
}

TEST(PagePoolTest, ErasedButPinnedKeyCanBeInsertedAgain) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 8);
  const Key key = pool->NewKey();
  Handle old_handle = MustInsert(*pool, key, 2, true);
  WritePattern(old_handle, 1);
  ASSERT_TRUE(pool->Erase(key));
  Handle fresh = MustInsert(*pool, key, 3, true);
  WritePattern(fresh, 2);
  EXPECT_NE(fresh.first_page(), old_handle.first_page());
  EXPECT_TRUE(PatternIntact(old_handle, 1));
  old_handle.Release();
  std::optional<Handle> hit = pool->Lookup(key);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->num_pages(), 3u);
  EXPECT_TRUE(PatternIntact(*hit, 2));
  EXPECT_EQ(pool->stats().used_bytes, 3 * kPage);
}

TEST(PagePoolTest, InsertLiveKeyIsAlreadyExists) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 8);
  const Key key = pool->NewKey();
  MustInsert(*pool, key, 2, true).Release();
  absl::StatusOr<Handle> again = pool->Insert(key, 1, false);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr(std::to_string(key)));
  std::optional<Handle> pinned = pool->Lookup(key);  // Pinned or not, a live key clashes.
  EXPECT_EQ(pool->Insert(key, 1, true).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(pool->stats().entries, 1u);
  EXPECT_EQ(pool->stats().used_bytes, 2 * kPage);
  EXPECT_EQ(pool->stats().insert_failures, 0u);  // Only RESOURCE_EXHAUSTED counts.
}

TEST(PagePoolTest, InsertInvalidArguments) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 8);
  EXPECT_EQ(pool->Insert(pool->NewKey(), 0, true).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = pool->Insert(pool->NewKey(), 9, false).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("9 pages"));
  EXPECT_TRUE(pool->Insert(pool->NewKey(), 8, false).ok());  // Exactly the pool.
}

TEST(PagePoolTest, RunsAreContiguousInsideTheArenaAndDisjoint) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 200);
  std::mt19937_64 rng(7);
  std::vector<Handle> handles;
  for (;;) {
    const uint32_t n = 1 + rng() % 9;
    absl::StatusOr<Handle> h = pool->Insert(pool->NewKey(), n, /*evictable=*/false);
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    EXPECT_EQ(h->data(), pool->base() + h->first_page() * kPage);
    EXPECT_EQ(h->bytes(), n * kPage);
    EXPECT_LE(h->first_page() + h->num_pages(), pool->num_pages());
    handles.push_back(*std::move(h));
  }
  std::vector<int> owner(pool->num_pages(), -1);
  for (int i = 0; i < static_cast<int>(handles.size()); ++i) {
    WritePattern(handles[i], handles[i].key());
    for (uint32_t p = handles[i].first_page(); p < handles[i].first_page() + handles[i].num_pages(); ++p) {
      EXPECT_EQ(owner[p], -1) << "page " << p << " in two runs";
      owner[p] = i;
    }
  }
  for (const Handle& h : handles) EXPECT_TRUE(PatternIntact(h, h.key()));
}

TEST(PagePoolTest, LruEvictionOrderAndLookupRefreshes) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 4);
  std::vector<Key> evicted;
  pool->SetEvictionListener([&evicted](Key k) { evicted.push_back(k); });
  const Key a = pool->NewKey(), b = pool->NewKey(), c = pool->NewKey(), d = pool->NewKey();
  for (Key k : {a, b, c, d}) MustInsert(*pool, k, 1, true).Release();
  pool->Lookup(a).reset();  // a becomes the most recently used: order b, c, d, a.

  const Key e = pool->NewKey(), f = pool->NewKey();
  MustInsert(*pool, e, 1, true).Release();
  EXPECT_THAT(evicted, ElementsAre(b));
  MustInsert(*pool, f, 2, true).Release();  // c and d are adjacent (pages 2, 3): both go, in LRU order.
  EXPECT_THAT(evicted, ElementsAre(b, c, d));
  EXPECT_TRUE(pool->Lookup(a).has_value());
  EXPECT_FALSE(pool->Lookup(b).has_value());
  EXPECT_FALSE(pool->Lookup(c).has_value());
  EXPECT_FALSE(pool->Lookup(d).has_value());
  EXPECT_EQ(pool->stats().evictions, 3u);
  EXPECT_EQ(pool->stats().entries, 3u);
}

TEST(PagePoolTest, OwnedEntriesAreNeverEvicted) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 4);
  std::vector<Key> evicted;
  pool->SetEvictionListener([&evicted](Key k) { evicted.push_back(k); });
  const Key o1 = pool->NewKey(), e1 = pool->NewKey(), e2 = pool->NewKey(), o2 = pool->NewKey();
  MustInsert(*pool, o1, 1, false).Release();  // Page 0.
  MustInsert(*pool, e1, 1, true).Release();   // Page 1.
  MustInsert(*pool, e2, 1, true).Release();   // Page 2.
  MustInsert(*pool, o2, 1, false).Release();  // Page 3.

  // Free (0) + evictable (2) < 3: fails without evicting anything.
  EXPECT_EQ(pool->Insert(pool->NewKey(), 3, true).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(evicted.empty());
  EXPECT_EQ(pool->stats().entries, 4u);

  Handle two = MustInsert(*pool, pool->NewKey(), 2, true);
  EXPECT_EQ(two.first_page(), 1u);
  EXPECT_THAT(evicted, ElementsAre(e1, e2));
  two.Release();

  // Only owned entries and an unpinned evictable one left; a 3-page run never fits around owned pages 0 and 3.
  EXPECT_EQ(pool->Insert(pool->NewKey(), 3, false).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(pool->Lookup(o1).has_value());
  EXPECT_TRUE(pool->Lookup(o2).has_value());
  EXPECT_TRUE(pool->Erase(o1));
  EXPECT_TRUE(pool->Erase(o2));
  EXPECT_EQ(pool->stats().entries, 1u);
}

TEST(PagePoolTest, PinnedEntriesAreNeverEvicted) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 2);
  const Key pinned_key = pool->NewKey(), loose_key = pool->NewKey();
  Handle pinned = MustInsert(*pool, pinned_key, 1, true);
  WritePattern(pinned, pinned_key);
  MustInsert(*pool, loose_key, 1, true).Release();
  Handle next = MustInsert(*pool, pool->NewKey(), 1, true);  // Evicts loose_key, not the pinned LRU-older one.
  EXPECT_FALSE(pool->Lookup(loose_key).has_value());
  EXPECT_EQ(pool->Insert(pool->NewKey(), 1, true).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(PatternIntact(pinned, pinned_key));
  EXPECT_TRUE(pool->Lookup(pinned_key).has_value());
  // Once released it is evictable again, and it is now the least recently used.
  pinned.Release();
  next.Release();
  MustInsert(*pool, pool->NewKey(), 1, true).Release();
  EXPECT_FALSE(pool->Lookup(pinned_key).has_value());
}

TEST(PagePoolTest, ResourceExhaustedNamesTheCounts) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 10);
  MustInsert(*pool, pool->NewKey(), 4, /*evictable=*/false).Release();  // Owned, pages 0-3.
  Handle pinned = MustInsert(*pool, pool->NewKey(), 3, /*evictable=*/true);  // Pinned, pages 4-6.
  const Key want = pool->NewKey();
  absl::StatusOr<Handle> h = pool->Insert(want, 5, true);
  ASSERT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(h.status().message());
  EXPECT_THAT(message, HasSubstr("asked for 5 pages"));
  EXPECT_THAT(message, HasSubstr("free 3 pages (largest run 3)"));
  EXPECT_THAT(message, HasSubstr("pinned 3 pages in 1 entries"));
  EXPECT_THAT(message, HasSubstr("owned 4 pages"));
  EXPECT_THAT(message, HasSubstr("capacity 10 pages"));
  EXPECT_THAT(message, HasSubstr("key " + std::to_string(want)));
  const PagePool::Stats s = pool->stats();
  EXPECT_EQ(s.insert_failures, 1u);
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_EQ(s.free_bytes, 3 * kPage);
  EXPECT_EQ(s.pinned_bytes, 3 * kPage);
}

TEST(PagePoolTest, FragmentedFailureMayEvict) {
  // Documented: when free + evictable pages suffice in number but pinned pages split them, the Insert evicts
  // every unpinned evictable entry in LRU order and still fails.
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 5);
  std::vector<Key> evicted;
  pool->SetEvictionListener([&evicted](Key k) { evicted.push_back(k); });
  const Key e1 = pool->NewKey(), e2 = pool->NewKey();
  MustInsert(*pool, e1, 1, true).Release();             // Page 0.
  Handle p1 = MustInsert(*pool, pool->NewKey(), 1, true);  // Page 1.
  MustInsert(*pool, e2, 1, true).Release();             // Page 2.
  Handle p2 = MustInsert(*pool, pool->NewKey(), 1, true);  // Page 3; page 4 free.
  absl::StatusOr<Handle> h = pool->Insert(pool->NewKey(), 2, true);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("evicted 2 entries"));
  EXPECT_THAT(evicted, ElementsAre(e1, e2));
  EXPECT_EQ(pool->stats().evictions, 2u);
  EXPECT_EQ(pool->stats().free_bytes, 3 * kPage);
  EXPECT_EQ(pool->stats().largest_free_run_bytes, 1 * kPage);
}

TEST(PagePoolTest, EvictionListenerCalledExactlyForEvictedKeysAndMayCallThePool) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 3);
  std::vector<Key> evicted;
  const Key owned = pool->NewKey();
  // The listener runs outside the pool's lock: it may look keys up, read stats, even insert.
  pool->SetEvictionListener([&](Key k) {
    evicted.push_back(k);
    EXPECT_FALSE(pool->Lookup(k).has_value());
    EXPECT_TRUE(pool->Lookup(owned).has_value());
    EXPECT_GE(pool->stats().evictions, evicted.size());
  });
  MustInsert(*pool, owned, 1, false).Release();
  const Key a = pool->NewKey(), b = pool->NewKey(), c = pool->NewKey();
  MustInsert(*pool, a, 1, true).Release();
  MustInsert(*pool, b, 1, true).Release();
  EXPECT_TRUE(pool->Erase(a));  // Erase never notifies.
  MustInsert(*pool, c, 1, true).Release();  // Fits in a's pages: no eviction.
  EXPECT_TRUE(evicted.empty());
  MustInsert(*pool, pool->NewKey(), 1, true).Release();  // Evicts b.
  EXPECT_THAT(evicted, ElementsAre(b));
  pool->SetEvictionListener(nullptr);
  MustInsert(*pool, pool->NewKey(), 1, true).Release();  // Evicts c, unobserved.
  EXPECT_THAT(evicted, ElementsAre(b));
  EXPECT_EQ(pool->stats().evictions, 2u);
}

TEST(PagePoolTest, AdjacentFreeRunsCoalesce) {
  HostAllocator allocator;
  // Every order of freeing three adjacent runs must leave one run of all nine pages.
  std::vector<int> order = {0, 1, 2};
  do {
    auto pool = MakePool(&allocator, 9);
    Key keys[3];
    for (int i = 0; i < 3; ++i) {
      keys[i] = pool->NewKey();
      Handle h = MustInsert(*pool, keys[i], 3, /*evictable=*/false);
      EXPECT_EQ(h.first_page(), 3u * i);
    }
    for (int i : order) pool->Erase(keys[i]);
    EXPECT_EQ(pool->stats().largest_free_run_bytes, 9 * kPage);
    Handle all = MustInsert(*pool, pool->NewKey(), 9, false);
    EXPECT_EQ(all.first_page(), 0u);
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST(PagePoolTest, BestFitPicksTheShortestRunThatFits) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, 16);
  // Holes of 3 [0,3), 2 [4,6) and 5 [7,12), separated by owned pages.
  const Key h0 = pool->NewKey(), h1 = pool->NewKey(), h2 = pool->NewKey();
  MustInsert(*pool, h0, 3, false).Release();
  MustInsert(*pool, pool->NewKey(), 1, false).Release();
  MustInsert(*pool, h1, 2, false).Release();
  MustInsert(*pool, pool->NewKey(), 1, false).Release();
  MustInsert(*pool, h2, 5, false).Release();
  MustInsert(*pool, pool->NewKey(), 4, false).Release();
  for (Key k : {h0, h1, h2}) pool->Erase(k);
  const Key at4 = pool->NewKey(), at1 = pool->NewKey();
  EXPECT_EQ(MustInsert(*pool, at4, 2, false).first_page(), 4u);
  EXPECT_EQ(MustInsert(*pool, pool->NewKey(), 4, false).first_page(), 7u);
  // Left: [0,3) and [11,12). One page goes to the exact fit, not the lower address.
  EXPECT_EQ(MustInsert(*pool, pool->NewKey(), 1, false).first_page(), 11u);
  EXPECT_EQ(MustInsert(*pool, pool->NewKey(), 1, false).first_page(), 0u);
  EXPECT_EQ(MustInsert(*pool, at1, 2, false).first_page(), 1u);
  EXPECT_EQ(pool->stats().free_bytes, 0u);
  // Two free runs of equal length, [1,3) and [4,6): the lower address wins.
  pool->Erase(at4);
  pool->Erase(at1);
  EXPECT_EQ(MustInsert(*pool, pool->NewKey(), 2, false).first_page(), 1u);
  EXPECT_EQ(MustInsert(*pool, pool->NewKey(), 1, false).first_page(), 4u);
}

TEST(PagePoolDeathTest, DestroyingWithOutstandingHandleCrashes) {
  EXPECT_DEATH(
      {
        HostAllocator allocator;
        auto pool = MakePool(&allocator, 2);
        Handle h = MustInsert(*pool, pool->NewKey(), 1, true);
        pool.reset();
      },
      "PagePool destroyed with 1 pinned entries");
}

// ---- Randomized property test against a model ----

class PagePoolPropertyTest : public ::testing::TestWithParam<uint64_t> {};

struct ModelEntry {
  Key key;
  uint32_t first;
  uint32_t num_pages;
  bool evictable;
  bool live;
  int pins;
  uint64_t unpinned_at;  // LRU order among live, evictable, unpinned entries.
};

TEST_P(PagePoolPropertyTest, MatchesModel) {
  constexpr uint32_t kPages = 256;
  constexpr int kOps = 4000;
  std::mt19937_64 rng(GetParam());
  FakeAllocator allocator;
  auto pool = MakePool(&allocator, kPages);

  std::map<uint64_t, ModelEntry> model;  // Entry id -> entry, for every entry the pool still holds.
  std::map<Key, uint64_t> live;          // Key -> entry id.
  std::vector<Key> used_keys;
  std::vector<std::pair<uint64_t, Handle>> held;  // (entry id, pin).
  uint64_t next_id = 0, tick = 0, evictions = 0, failures = 0;
  uint64_t inserted = 0, clashes = 0, deferred_erases = 0;
  std::vector<Key> evicted;
  pool->SetEvictionListener([&evicted](Key k) { evicted.push_back(k); });

  auto rand_below = [&rng](uint64_t n) { return rng() % n; };
  // Occupancy from the model: entry id per page, or -1. Fails the test on any overlap.
  auto occupancy = [&](const std::map<uint64_t, ModelEntry>& m) {
    std::vector<int64_t> owner(kPages, -1);
    for (const auto& [id, e] : m) {
      for (uint32_t p = e.first; p < e.first + e.num_pages; ++p) {
        EXPECT_EQ(owner[p], -1) << "page " << p << " held by entries " << owner[p] << " and " << id;
        owner[p] = id;
      }
    }
    return owner;
  };
  // Best fit over the model's free pages: the start of the shortest free run >= n (lowest start among ties).
  auto best_fit = [&](const std::vector<int64_t>& owner, uint32_t n) -> std::optional<uint32_t> {
    std::optional<uint32_t> best;
    uint32_t best_len = 0;
    for (uint32_t p = 0; p < kPages;) {
      if (owner[p] != -1) {
        ++p;
        continue;
      }
      uint32_t q = p;
      while (q < kPages && owner[q] == -1) ++q;
      if (q - p >= n && (!best.has_value() || q - p < best_len)) {
        best = p;
        best_len = q - p;
      }
      p = q;
    }
    return best;
  };
  auto largest_run = [&](const std::vector<int64_t>& owner) {
    uint32_t best = 0, run = 0;
    for (uint32_t p = 0; p < kPages; ++p) {
      run = owner[p] == -1 ? run + 1 : 0;
      best = std::max(best, run);
    }
    return best;
  };
  auto check_stats = [&](int op) {
    const std::vector<int64_t> owner = occupancy(model);
    uint64_t used = 0, pinned = 0, erased_pinned = 0, pinned_entries = 0;
    for (const auto& [id, e] : model) {
      used += e.num_pages;
      if (e.pins > 0) {
        pinned += e.num_pages;
        ++pinned_entries;
      }
      if (!e.live) {
        EXPECT_GT(e.pins, 0) << "an erased entry without pins should be gone";
        erased_pinned += e.num_pages;
      }
    }
    const PagePool::Stats s = pool->stats();
    EXPECT_EQ(s.capacity_bytes, kPages * kPage) << "op " << op;
    EXPECT_EQ(s.used_bytes, used * kPage) << "op " << op;
    EXPECT_EQ(s.free_bytes, (kPages - used) * kPage) << "op " << op;
    EXPECT_EQ(s.pinned_bytes, pinned * kPage) << "op " << op;
    EXPECT_EQ(s.erased_pinned_bytes, erased_pinned * kPage) << "op " << op;
    EXPECT_EQ(s.largest_free_run_bytes, largest_run(owner) * kPage) << "op " << op;
    EXPECT_EQ(s.entries, live.size()) << "op " << op;
    EXPECT_EQ(s.pinned_entries, pinned_entries) << "op " << op;
    EXPECT_EQ(s.evictions, evictions) << "op " << op;
    EXPECT_EQ(s.insert_failures, failures) << "op " << op;
  };

  for (int op = 0; op < kOps && !HasFailure(); ++op) {
    const uint64_t dice = rand_below(100);
    if (dice < 35) {
      // Insert: mostly fresh keys; sometimes a used one (live: ALREADY_EXISTS; dead: a new entry).
      Key key = pool->NewKey();
      if (!used_keys.empty() && rand_below(10) == 0) key = used_keys[rand_below(used_keys.size())];
      uint32_t n = rand_below(4) == 0 ? 1 + rand_below(48) : 1 + rand_below(10);
      if (rand_below(100) == 0) n = rand_below(2) == 0 ? 0 : kPages + 1 + rand_below(5);
      const bool evictable = rand_below(10) < 7;

      // Predict.
      absl::StatusCode want_code = absl::StatusCode::kOk;
      std::vector<Key> want_evicted;
      std::optional<uint32_t> want_first;
      if (n == 0 || n > kPages) {
        want_code = absl::StatusCode::kInvalidArgument;
      } else if (live.count(key)) {
        want_code = absl::StatusCode::kAlreadyExists;
      } else {
        std::vector<int64_t> owner = occupancy(model);
        want_first = best_fit(owner, n);
        if (!want_first.has_value()) {
          std::vector<const ModelEntry*> lru;
          uint64_t free_pages = std::count(owner.begin(), owner.end(), -1), lru_pages = 0;
          for (const auto& [id, e] : model) {
            if (e.live && e.evictable && e.pins == 0) {
              lru.push_back(&e);
              lru_pages += e.num_pages;
            }
          }
          std::sort(lru.begin(), lru.end(),
                    [](const ModelEntry* a, const ModelEntry* b) { return a->unpinned_at < b->unpinned_at; });
          if (free_pages + lru_pages >= n) {
            for (const ModelEntry* victim : lru) {
              want_evicted.push_back(victim->key);
              for (uint32_t p = victim->first; p < victim->first + victim->num_pages; ++p) owner[p] = -1;
              want_first = best_fit(owner, n);
              if (want_first.has_value()) break;
            }
          }
          if (!want_first.has_value()) want_code = absl::StatusCode::kResourceExhausted;
        }
      }

      evicted.clear();
      absl::StatusOr<Handle> h = pool->Insert(key, n, evictable);
      ASSERT_EQ(h.status().code(), want_code) << "op " << op << " n=" << n << ": " << h.status();
      ASSERT_EQ(evicted, want_evicted) << "op " << op;
      for (Key k : evicted) {
        const uint64_t id = live.at(k);
        live.erase(k);
        model.erase(id);
        ++evictions;
      }
      if (want_code == absl::StatusCode::kResourceExhausted) ++failures;
      if (want_code == absl::StatusCode::kAlreadyExists) ++clashes;
      if (h.ok()) {
        ASSERT_EQ(h->first_page(), *want_first) << "op " << op << ": not the best fit";
        ASSERT_EQ(h->num_pages(), n);
        ASSERT_EQ(h->key(), key);
        ASSERT_EQ(h->data(), pool->base() + *want_first * kPage);
        const uint64_t id = next_id++;
        ++inserted;
        model[id] = ModelEntry{key, *want_first, n, evictable, true, 1, 0};
        live[key] = id;
        used_keys.push_back(key);
        WritePattern(*h, id);
        held.emplace_back(id, *std::move(h));
      }
    } else if (dice < 60) {
      // Lookup: mostly live keys.
      if (used_keys.empty()) continue;
      Key key = used_keys[rand_below(used_keys.size())];
      if (!live.empty() && rand_below(10) < 7) {
        auto it = live.begin();
        std::advance(it, rand_below(live.size()));
        key = it->first;
      }
      std::optional<Handle> h = pool->Lookup(key);
      auto it = live.find(key);
      ASSERT_EQ(h.has_value(), it != live.end()) << "op " << op << " key " << key;
      if (h.has_value()) {
        ModelEntry& e = model.at(it->second);
        ASSERT_EQ(h->first_page(), e.first);
        ASSERT_EQ(h->num_pages(), e.num_pages);
        EXPECT_TRUE(PatternIntact(*h, it->second)) << "op " << op << ": live entry overwritten";
        ++e.pins;
        held.emplace_back(it->second, *std::move(h));
      }
    } else if (dice < 85) {
      // Release a held pin (half of the lookups and inserts are released right away by this path).
      if (held.empty()) continue;
      const size_t i = rand_below(held.size());
      const uint64_t id = held[i].first;
      ModelEntry& e = model.at(id);
      ASSERT_EQ(held[i].second.first_page(), e.first);
      EXPECT_TRUE(PatternIntact(held[i].second, id)) << "op " << op << ": pinned entry " << id << " overwritten";
      held[i].second.Release();
      held.erase(held.begin() + i);
      if (--e.pins == 0) {
        if (!e.live) {
          model.erase(id);
        } else {
          e.unpinned_at = ++tick;
        }
      }
    } else if (dice < 98) {
      // Erase: mostly live keys.
      if (used_keys.empty()) continue;
      Key key = used_keys[rand_below(used_keys.size())];
      if (!live.empty() && rand_below(10) < 8) {
        auto it = live.begin();
        std::advance(it, rand_below(live.size()));
        key = it->first;
      }
      auto it = live.find(key);
      ASSERT_EQ(pool->Erase(key), it != live.end()) << "op " << op;
      if (it != live.end()) {
        ModelEntry& e = model.at(it->second);
        e.live = false;
        if (e.pins == 0) {
          model.erase(it->second);
        } else {
          ++deferred_erases;
        }
        live.erase(it);
      }
    } else {
      // Release everything, in random order.
      std::shuffle(held.begin(), held.end(), rng);
      while (!held.empty()) {
        const uint64_t id = held.back().first;
        ModelEntry& e = model.at(id);
        EXPECT_TRUE(PatternIntact(held.back().second, id));
        held.pop_back();  // The handle's destructor unpins.
        if (--e.pins == 0) {
          if (!e.live) {
            model.erase(id);
          } else {
            e.unpinned_at = ++tick;
          }
        }
      }
    }
    check_stats(op);
  }
  // Releasing the rest leaves exactly the live entries.
  held.clear();
  const PagePool::Stats s = pool->stats();
  EXPECT_EQ(s.pinned_bytes, 0u);
  EXPECT_EQ(s.erased_pinned_bytes, 0u);
  EXPECT_EQ(s.entries, live.size());
  // The seed must have exercised every path.
  EXPECT_GT(inserted, 500u);
  EXPECT_GT(evictions, 0u);
  EXPECT_GT(failures, 0u);
  EXPECT_GT(clashes, 0u);
  EXPECT_GT(deferred_erases, 0u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, PagePoolPropertyTest, ::testing::Values(1, 2, 3, 42, 1234, 99991));

// ---- Concurrency ----

TEST(PagePoolConcurrencyTest, RandomOpsFromManyThreadsKeepAccounting) {
  constexpr uint32_t kPages = 1024;
  constexpr int kThreads = 4;
  HostAllocator allocator;
  auto pool = MakePool(&allocator, kPages);
  std::atomic<uint64_t> listener_calls{0};
  pool->SetEvictionListener([&](Key) { listener_calls.fetch_add(1, std::memory_order_relaxed); });

  // Handles handed between threads, so pins are released on threads other than the one that took them. The
  // mutex orders the pattern written by the producer before the consumer's check.
  absl::Mutex handoff_mu;
  std::vector<Handle> handoff;  // Guarded by handoff_mu.
  std::atomic<Key> max_key{0};
  std::atomic<uint64_t> ops{0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);

  auto worker = [&](int t) {
    std::mt19937_64 rng(1000 + t);
    std::vector<Handle> held;
    std::vector<Key> mine;  // Keys this thread inserted: only it writes their data, so only it reads them freely.
    auto check_and_drop = [&](Handle& h) {
      EXPECT_TRUE(PatternIntact(h, h.key())) << "key " << h.key() << " overwritten while pinned";
      h.Release();
    };
    while (std::chrono::steady_clock::now() < deadline) {
      ops.fetch_add(1, std::memory_order_relaxed);
      const uint64_t dice = rng() % 100;
      if (dice < 30) {
        const Key key = pool->NewKey();
        const uint32_t n = rng() % 8 == 0 ? 1 + rng() % 64 : 1 + rng() % 8;
        absl::StatusOr<Handle> h = pool->Insert(key, n, /*evictable=*/rng() % 4 != 0);
        Key seen = max_key.load();
        while (seen < key && !max_key.compare_exchange_weak(seen, key)) {
        }
        if (!h.ok()) {
          EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted) << h.status();
          continue;
        }
        EXPECT_LE(h->first_page() + h->num_pages(), kPages);
        WritePattern(*h, key);
        mine.push_back(key);
        held.push_back(*std::move(h));
      } else if (dice < 55) {
        // Lookup: own keys (data checked) or anyone's (bounds only: another thread may be writing the data).
        const bool own = !mine.empty() && rng() % 2 == 0;
        const Key key = own ? mine[rng() % mine.size()] : 1 + rng() % (max_key.load() + 1);
        std::optional<Handle> h = pool->Lookup(key);
        if (!h.has_value()) continue;
        EXPECT_EQ(h->key(), key);
        EXPECT_LE(h->first_page() + h->num_pages(), kPages);
        if (own) {
          EXPECT_TRUE(PatternIntact(*h, key));
          held.push_back(*std::move(h));
        }
      } else if (dice < 80) {
        if (held.empty()) continue;
        const size_t i = rng() % held.size();
        if (rng() % 3 == 0) {
          absl::MutexLock lock(&handoff_mu);
          handoff.push_back(std::move(held[i]));
        } else {
          check_and_drop(held[i]);
        }
        held.erase(held.begin() + i);
      } else if (dice < 90) {
        std::vector<Handle> taken;
        {
          absl::MutexLock lock(&handoff_mu);
          taken.swap(handoff);
        }
        for (Handle& h : taken) check_and_drop(h);
      } else if (dice < 92) {
        // Stats from any thread are a consistent snapshot.
        const PagePool::Stats s = pool->stats();
        EXPECT_EQ(s.used_bytes + s.free_bytes, s.capacity_bytes);
        EXPECT_LE(s.pinned_bytes, s.used_bytes);
        EXPECT_LE(s.erased_pinned_bytes, s.pinned_bytes);
        EXPECT_LE(s.largest_free_run_bytes, s.free_bytes);
      } else {
        // Erase: own keys mostly, sometimes anyone's (a pinned victim's erase is deferred).
        const Key key = !mine.empty() && rng() % 4 != 0 ? mine[rng() % mine.size()]
                                                         : 1 + rng() % (max_key.load() + 1);
        pool->Erase(key);
      }
      if (held.size() > 24) {
        check_and_drop(held.front());
        held.erase(held.begin());
      }
    }
    for (Handle& h : held) check_and_drop(h);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (std::thread& th : threads) th.join();
  {
    absl::MutexLock lock(&handoff_mu);
    for (Handle& h : handoff) h.Release();
    handoff.clear();
  }

  const PagePool::Stats s = pool->stats();
  EXPECT_EQ(s.pinned_bytes, 0u);
  EXPECT_EQ(s.pinned_entries, 0u);
  EXPECT_EQ(s.erased_pinned_bytes, 0u);
  EXPECT_EQ(s.used_bytes + s.free_bytes, s.capacity_bytes);
  EXPECT_LE(s.largest_free_run_bytes, s.free_bytes);
  EXPECT_EQ(s.evictions, listener_calls.load());
  // The live entries are exactly those Lookup finds; they account for every used byte and never overlap.
  std::vector<Handle> live;
  for (Key k = 1; k <= max_key.load(); ++k) {
    if (std::optional<Handle> h = pool->Lookup(k)) live.push_back(*std::move(h));
  }
  EXPECT_EQ(live.size(), s.entries);
  size_t live_bytes = 0;
  std::vector<bool> taken(kPages, false);
  for (const Handle& h : live) {
    live_bytes += h.bytes();
    EXPECT_TRUE(PatternIntact(h, h.key()));
    for (uint32_t p = h.first_page(); p < h.first_page() + h.num_pages(); ++p) {
      EXPECT_FALSE(taken[p]) << "page " << p << " in two live runs";
      taken[p] = true;
    }
  }
  EXPECT_EQ(live_bytes, s.used_bytes);
  EXPECT_GT(ops.load(), 1000u);
  EXPECT_GT(s.evictions, 0u);
  live.clear();
}

}  // namespace
}  // namespace livekv
