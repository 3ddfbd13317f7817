#include "common/thread_pool.h"

#include <algorithm>

#include "common/logging.h"

namespace livekv {

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads) {
  CHECK_GE(num_threads, 1);
  workers_.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

ThreadPool* ThreadPool::Default() {
  static ThreadPool* pool = new ThreadPool(std::max(1u, std::thread::hardware_concurrency()));
  return pool;
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                             int64_t min_grain) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_grain));
  const int parts = static_cast<int>(std::min<int64_t>(num_threads_, max_parts));
  if (parts == 1) {
    fn(0, n);
    return;
  }
  absl::MutexLock call_lock(&call_mu_);
  std::pair<int64_t, int64_t> mine;
  {
    absl::MutexLock lock(&mu_);
    ranges_.assign(num_threads_, {0, 0});
    for (int p = 0; p < parts; ++p) ranges_[p] = {n * p / parts, n * (p + 1) / parts};
    mine = ranges_[0];
    fn_ = &fn;
    pending_ = num_threads_ - 1;
    ++generation_;
  }
  fn(mine.first, mine.second);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* pending) { return *pending == 0; }, &pending_));
  fn_ = nullptr;
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t)>* fn;
    std::pair<int64_t, int64_t> range;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || generation_ != seen; };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      range = ranges_[index];
    }
    if (range.second > range.first) (*fn)(range.first, range.second);
    absl::MutexLock lock(&mu_);
    --pending_;
  }
}

}  // namespace livekv
