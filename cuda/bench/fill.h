// File: cuda/bench/fill.h
//
// Device-side random fill for benchmarks (never benchmark on zeros: METHOD.md).
#ifndef LIVEKV_CUDA_BENCH_FILL_H_
#define LIVEKV_CUDA_BENCH_FILL_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

// x[i] = uniform in [-scale, scale) from a hash of (seed, i).
absl::Status FillUniformBf16(__nv_bfloat16* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream);
absl::Status FillUniformF32(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream);

// An empty kernel (one CTA of 32 threads): the launch-latency floor.
absl::Status LaunchEmpty(cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_BENCH_FILL_H_
