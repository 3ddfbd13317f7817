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

// Host -> device copy, complete on return. A plain cudaMemcpy from pageable memory may return before its DMA lands,
// and kernels on our (non-blocking) streams do not wait for the legacy stream it runs on: they could read the
// destination half-written (kernels_bench read a 400 KB attention plan so, and faulted on its garbage pointers).
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);

// An empty kernel (one CTA of 32 threads): the launch-latency floor.
absl::Status LaunchEmpty(cudaStream_t stream);
// One thread spinning on the global timer for `microseconds`: holds a stream so that the host enqueues ahead of it.
absl::Status LaunchSpin(double microseconds, cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_BENCH_FILL_H_
