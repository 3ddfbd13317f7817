#include "services/common/session_queue.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

TEST(SessionQueueTest, OneSessionRunsInArrivalOrderOthersInParallel) {
  SessionQueue q(100, 100);
  std::vector<int> order;
  absl::Mutex mu;
  std::atomic<int> inside{0}, max_inside{0};
  std::vector<std::thread> threads;
  auto first = q.Enter("a", nullptr);
  ASSERT_TRUE(first.ok());
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto t = q.Enter("a", nullptr);
      ASSERT_TRUE(t.ok());
      const int now = ++inside;
      int m = max_inside;
      while (now > m && !max_inside.compare_exchange_weak(m, now)) {
      }
      {
        absl::MutexLock l(&mu);
        order.push_back(i);
      }
      absl::SleepFor(absl::Milliseconds(2));
      --inside;
    });
    absl::SleepFor(absl::Milliseconds(10));  // arrive in index order
  }
  // Another session is not blocked by "a".
  auto other = q.Enter("b", nullptr);
  EXPECT_TRUE(other.ok());
  first = SessionQueue::Turn();
  for (auto& t : threads) t.join();
  EXPECT_EQ(max_inside.load(), 1);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(SessionQueueTest, FullQueuesPushBack) {
  SessionQueue q(2, 3);
  auto a1 = q.Enter("a", nullptr);
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    auto a2 = q.Enter("a", nullptr);
    EXPECT_TRUE(a2.ok());
    done = true;
  });
  while (q.waiting() < 2) absl::SleepFor(absl::Milliseconds(1));
  auto a3 = q.Enter("a", nullptr);
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  auto b1 = q.Enter("b", nullptr);
  EXPECT_TRUE(b1.ok());
  auto c1 = q.Enter("c", nullptr);
  EXPECT_EQ(c1.status().code(), absl::StatusCode::kResourceExhausted);
  a1 = SessionQueue::Turn();
  waiter.join();
  EXPECT_TRUE(done);
}

TEST(SessionQueueTest, CancelledWaitersLeaveAndDoNotBlockOthers) {
  SessionQueue q(10, 10);
  auto a1 = q.Enter("a", nullptr);
  std::atomic<bool> cancel{false};
  absl::StatusCode code = absl::StatusCode::kOk;
  std::thread quitter([&] { code = q.Enter("a", [&] { return cancel.load(); }).status().code(); });
  std::atomic<bool> third_in{false};
  std::thread third([&] {
    absl::SleepFor(absl::Milliseconds(20));
    auto t = q.Enter("a", nullptr);
    EXPECT_TRUE(t.ok());
    third_in = true;
  });
  absl::SleepFor(absl::Milliseconds(40));
  cancel = true;
  quitter.join();
  EXPECT_EQ(code, absl::StatusCode::kCancelled);
  a1 = SessionQueue::Turn();  // the third caller must get its turn though the second gave up
  third.join();
  EXPECT_TRUE(third_in);
  EXPECT_EQ(q.waiting(), 0);
}

}  // namespace
}  // namespace livekv
