// File: cuda/ops/kv_layout.h
//
// Exact KV data movement on the device (cuda/kernels/kv_layout.cuh): row gather/scatter by index, and
// token-major <-> head-major page / dense layouts (kvcache/page_layout.h's functions, batched over heads). Rows
// are opaque bytes, so every dtype is moved bit for bit. All pointers are device memory; calls enqueue on
// `stream`. Regions written must not overlap regions read.
#ifndef LIVEKV_CUDA_OPS_KV_LAYOUT_H_
#define LIVEKV_CUDA_OPS_KV_LAYOUT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

// dst row (dst_index ? dst_index[i] : i) = src row (src_index ? src_index[i] : i) for i < n (device int32 index
// lists; a negative index skips the row). Strides are in bytes between consecutive rows (>= row_bytes).
// Gather: src_index set; scatter: dst_index set.
absl::Status CopyRows(const void* src, int64_t src_stride, const int32_t* src_index, void* dst, int64_t dst_stride,
                      const int32_t* dst_index, int64_t n, int64_t row_bytes, cudaStream_t stream);

// Token-major k, v [n][heads][row_bytes] into each head's run of pages (page = page_tokens K rows, then
// page_tokens V rows): head h's token t goes to row head_first_row[h] + t of the run starting at head_pages[h].
// head_pages, head_first_row: device arrays [heads]; every page run 16-byte aligned (pool pages are).
absl::Status TokenMajorToPages(const void* k, const void* v, int64_t n, int32_t heads, int64_t row_bytes,
                               int32_t page_tokens, uint8_t* const* head_pages, const int64_t* head_first_row,
                               cudaStream_t stream);

// The inverse: rows [head_first_row[h], + n) of each head's page run into token-major k, v [n][heads][row_bytes].
absl::Status PagesToTokenMajor(uint8_t* const* head_pages, const int64_t* head_first_row, int32_t page_tokens,
                               int64_t n, int32_t heads, int64_t row_bytes, void* k, void* v, cudaStream_t stream);

// Token-major src [n][heads][row_bytes] -> head-major dst [heads][capacity][row_bytes], rows [row0, row0 + n)
// (Backend::ScatterHeadMajor for equal dtypes), and back.
absl::Status TokenMajorToHeadMajor(const void* src, int64_t n, int32_t heads, int64_t row_bytes, void* dst,
                                   int64_t capacity, int64_t row0, cudaStream_t stream);
absl::Status HeadMajorToTokenMajor(const void* src, int64_t capacity, int64_t row0, int64_t n, int32_t heads,
                                   int64_t row_bytes, void* dst, cudaStream_t stream);

// A run to copy: bytes (a multiple of 16) from src to dst, both 16-byte aligned.
struct CopyRun {
  const void* src;
  void* dst;
  uint64_t bytes;
};

// Copies every run with SM loads and stores (`ctas` CTAs of `threads` threads, a multiple of 32 up to 1024; one
// warp per run at a time, four 16-byte loads in flight per lane). `runs` (n of them) and every source must be
// readable by the device: device memory, or mapped pinned host memory (then this is a zero-copy gather over PCIe:
// the recall path's alternative to copy-engine transfers of small runs). Destinations are device memory. Runs must
// not overlap each other's destinations. Over PCIe, the warps' outstanding loads (ctas x threads x 64 bytes) are
// what the gather costs kernels running beside it: a few CTAs reach the link's rate (kernels_bench).
absl::Status GatherRuns(const CopyRun* runs, int32_t n, int32_t ctas, int32_t threads, cudaStream_t stream);

// The same copies by the Tensor Memory Accelerator (sm_90): `ctas` CTAs of one warp, each streaming a contiguous
// share of the runs through 128 KiB of shared memory with bulk asynchronous copies (chunks of 16 KiB, 8 in flight),
// so the SMs' load pipes are not used. Same requirements as GatherRuns. FAILED_PRECONDITION on a device older than
// sm_90.
absl::Status GatherRunsBulk(const CopyRun* runs, int32_t n, int32_t ctas, cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_KV_LAYOUT_H_
