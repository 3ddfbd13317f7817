// File: common/thread_pool.h
//
// A fixed pool of worker threads with a blocking parallel-for, for data-parallel CPU kernels.
//
//   ThreadPool pool(4);
//   pool.ParallelFor(n_heads, [&](int64_t begin, int64_t end) { for (h = begin; h < end; ++h) ...; });
//
// Thread-safety: ParallelFor may be called from several threads; calls are serialised. The callable runs on
// the pool's workers and on the calling thread, so it must be safe to run concurrently on disjoint ranges.
#ifndef LIVEKV_COMMON_THREAD_POOL_H_
#define LIVEKV_COMMON_THREAD_POOL_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace livekv {

class ThreadPool {
 public:
  // REQUIRES: num_threads >= 1. The calling thread counts as one: num_threads - 1 workers are started.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Splits [0, n) into at most num_threads() contiguous ranges of at least `min_grain` items and runs
  // fn(begin, end) on each; returns when all have finished. Runs inline when n is small.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_grain = 1);

  // A pool sized to the machine's hardware threads, created on first use and never destroyed.
  static ThreadPool* Default();

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  absl::Mutex call_mu_;  // Serialises ParallelFor calls.

  absl::Mutex mu_;
  const std::function<void(int64_t, int64_t)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<std::pair<int64_t, int64_t>> ranges_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace livekv

#endif  // LIVEKV_COMMON_THREAD_POOL_H_
