#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace livekv {
namespace {

TEST(ThreadPoolTest, CoversEveryIndexExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {0, 1, 3, 4, 5, 97, 1000}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialisedCorrectly) {
  ThreadPool pool(3);
  std::atomic<int64_t> sum{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r)
        pool.ParallelFor(100, [&](int64_t b, int64_t e) { sum.fetch_add(e - b); });
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(sum.load(), 4 * 50 * 100);
}

TEST(ThreadPoolTest, MinGrainLimitsSplitting) {
  ThreadPool pool(4);
  std::atomic<int> calls{0};
  pool.ParallelFor(10, [&](int64_t, int64_t) { calls.fetch_add(1); }, /*min_grain=*/10);
  EXPECT_EQ(calls.load(), 1);
}

}  // namespace
}  // namespace livekv
