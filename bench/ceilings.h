// File: bench/ceilings.h
//
// Hardware ceilings measured in the same run as a benchmark, so every figure can be printed as a ratio.
#ifndef LIVEKV_BENCH_CEILINGS_H_
#define LIVEKV_BENCH_CEILINGS_H_

#include <cstddef>
#include <functional>

namespace livekv::bench {

// Median wall-clock seconds of `fn` over `reps` runs after `warmup` runs.
double MedianSeconds(const std::function<void()>& fn, int reps = 5, int warmup = 1);

// Single-thread memcpy between two pre-faulted buffers of `bytes`, in GB/s (1e9 bytes per second).
double MemcpyGBps(size_t bytes = size_t{256} << 20);

// Read bandwidth of `threads` threads summing disjoint parts of a pre-faulted buffer of `bytes`, in GB/s: the
// ceiling of a pass that streams weights or KV from memory once.
double ReadGBps(int threads, size_t bytes = size_t{512} << 20);

// fp32 matrix product rate of OpenBLAS (cblas_sgemm) at m x n x k with its configured threads, in GFLOP/s.
double SgemmGflops(int m, int n, int k);

}  // namespace livekv::bench

#endif  // LIVEKV_BENCH_CEILINGS_H_
