// Micro benchmark of PagePool with 100k live entries.
//
//   bazel run //kvcache:page_pool_benchmark   (.bazelrc builds -c opt)
//
// Figures: Insert+Erase and Lookup+Release ns/op, on a pool with one free run ("compact") and on one whose free
// space is split into ~100k runs ("fragmented", the O(log R) path), plus Insert under eviction pressure. The
// ceiling printed beside them is what one op cannot beat: an uncontended absl::Mutex lock/unlock plus a
// flat_hash_map probe over 100k keys (BM_Ceiling_*).
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "common/allocator.h"
#include "common/logging.h"
#include "kvcache/page_pool.h"

namespace livekv {
namespace {

constexpr int kLiveEntries = 100000;
constexpr size_t kPageBytes = 16384;  // 32 tokens x 128 dims x bf16 x (K, V): ARCHITECTURE.md §3.

// Address space only: HostAllocator maps with MAP_NORESERVE and the benchmark never touches page contents.
std::unique_ptr<PagePool> MakePool(HostAllocator* allocator, uint32_t pages) {
  PagePool::Options options;
  options.page_bytes = kPageBytes;
  options.capacity_bytes = static_cast<size_t>(pages) * kPageBytes;
  absl::StatusOr<std::unique_ptr<PagePool>> pool = PagePool::Create(allocator, options);
  CHECK(pool.ok()) << pool.status();
  return *std::move(pool);
}

// 100k live entries of 1..4 pages. With `fragment`, 200k are inserted and every other one erased, leaving 100k
// live entries separated by ~100k free runs (plus the free tail).
std::vector<PagePool::Key> Fill(PagePool& pool, bool fragment) {
  std::mt19937_64 rng(1);
  std::vector<PagePool::Key> keys;
  const int first_fill = fragment ? 2 * kLiveEntries : kLiveEntries;
  for (int i = 0; i < first_fill; ++i) {
    const PagePool::Key key = pool.NewKey();
    CHECK(pool.Insert(key, 1 + rng() % 4, /*evictable=*/false).ok());
    keys.push_back(key);
  }
  if (fragment) {
    std::vector<PagePool::Key> kept;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (i % 2 == 0) {
        pool.Erase(keys[i]);
      } else {
        kept.push_back(keys[i]);
      }
    }
    keys.swap(kept);
  }
  return keys;
}

void BM_InsertErase(benchmark::State& state) {
  const bool fragment = state.range(0) != 0;
  HostAllocator allocator;
  // Compact: room for 100k entries of up to 4 pages plus slack. Fragmented: the same with the holes left behind.
  auto pool = MakePool(&allocator, fragment ? 2 * kLiveEntries * 4 : kLiveEntries * 4 + 1024);
  std::vector<PagePool::Key> keys = Fill(*pool, fragment);
  std::mt19937_64 rng(2);
  for (auto _ : state) {
    const PagePool::Key key = pool->NewKey();
    absl::StatusOr<PagePool::Handle> h = pool->Insert(key, 1 + rng() % 4, /*evictable=*/true);
    benchmark::DoNotOptimize(h->data());
    h->Release();
    pool->Erase(key);
  }
  const PagePool::Stats s = pool->stats();
  state.counters["live_entries"] = s.entries;
  state.counters["largest_free_run_pages"] = s.largest_free_run_bytes / kPageBytes;
  state.SetLabel(fragment ? "fragmented (~100k free runs)" : "compact");
}
BENCHMARK(BM_InsertErase)->Arg(0)->Arg(1);

// One pool of 100k entries shared by every run and thread of BM_LookupRelease (built once, never destroyed).
struct LookupFixture {
  HostAllocator allocator;
  std::unique_ptr<PagePool> pool;
  std::vector<PagePool::Key> keys;
  LookupFixture() : pool(MakePool(&allocator, kLiveEntries * 4 + 1024)) {
    // Evictable entries, so every Release relinks the LRU list: the cache-hit path.
    std::mt19937_64 rng(1);
    for (int i = 0; i < kLiveEntries; ++i) {
      const PagePool::Key key = pool->NewKey();
      CHECK(pool->Insert(key, 1 + rng() % 4, /*evictable=*/true).ok());
      keys.push_back(key);
    }
  }
};

void BM_LookupRelease(benchmark::State& state) {
  static LookupFixture* fixture = new LookupFixture();
  std::mt19937_64 rng(3 + state.thread_index());
  for (auto _ : state) {
    std::optional<PagePool::Handle> h = fixture->pool->Lookup(fixture->keys[rng() % fixture->keys.size()]);
    benchmark::DoNotOptimize(h->data());
  }
}
BENCHMARK(BM_LookupRelease)->Threads(1)->Threads(2);

// Steady state of a full cache: every Insert evicts the least recently used entry.
void BM_InsertWithEviction(benchmark::State& state) {
  HostAllocator allocator;
  auto pool = MakePool(&allocator, kLiveEntries);
  for (int i = 0; i < kLiveEntries; ++i) CHECK(pool->Insert(pool->NewKey(), 1, /*evictable=*/true).ok());
  for (auto _ : state) {
    absl::StatusOr<PagePool::Handle> h = pool->Insert(pool->NewKey(), 1, /*evictable=*/true);
    benchmark::DoNotOptimize(h->data());
  }
  state.counters["evictions"] = pool->stats().evictions;
}
BENCHMARK(BM_InsertWithEviction);

// Ceiling: one uncontended lock/unlock plus one hash probe over 100k keys.
void BM_Ceiling_LockAndProbe(benchmark::State& state) {
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, void*> table;
  for (uint64_t k = 1; k <= kLiveEntries; ++k) table[k] = &table;
  std::mt19937_64 rng(3);
  for (auto _ : state) {
    absl::MutexLock lock(&mu);
    auto it = table.find(1 + rng() % kLiveEntries);
    benchmark::DoNotOptimize(it->second);
  }
}
BENCHMARK(BM_Ceiling_LockAndProbe);

}  // namespace
}  // namespace livekv
