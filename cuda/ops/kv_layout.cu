#include "cuda/ops/kv_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/kv_layout.cuh"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

bool Al16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

unsigned Blocks(int64_t work) { return static_cast<unsigned>(std::clamp<int64_t>(kn::CeilDiv(work, 256), 1, 16384)); }

}  // namespace

absl::Status CopyRows(const void* src, int64_t src_stride, const int32_t* src_index, void* dst, int64_t dst_stride,
                      const int32_t* dst_index, int64_t n, int64_t row_bytes, cudaStream_t stream) {
  if (n < 0 || row_bytes <= 0 || src_stride < row_bytes || dst_stride < row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("copy_rows: need n >= 0, row_bytes > 0, strides >= row_bytes; saw n ",
                                                   n, ", row_bytes ", row_bytes, ", strides ", src_stride, "/", dst_stride));
  }
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) return absl::InvalidArgumentError("copy_rows: null src or dst");
  kn::CopyRowsView v{static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), src_index, dst_index, n, row_bytes,
                     src_stride, dst_stride};
  const bool vec = row_bytes % 16 == 0 && src_stride % 16 == 0 && dst_stride % 16 == 0 && Al16(src) && Al16(dst);
  if (vec) {
    kn::CopyRowsKernel<true><<<Blocks(n * row_bytes / 16), 256, 0, stream>>>(v);
  } else {
    kn::CopyRowsKernel<false><<<Blocks(n * row_bytes), 256, 0, stream>>>(v);
  }
  return LaunchStatus("CopyRowsKernel");
}

namespace {

absl::Status PagesImpl(bool to_pages, void* k, void* v, int64_t n, int32_t heads, int64_t row_bytes,
                       int32_t page_tokens, uint8_t* const* head_pages, const int64_t* head_first_row,
                       cudaStream_t stream) {
  const char* op = to_pages ? "token_major_to_pages" : "pages_to_token_major";
  if (n < 0 || heads <= 0 || row_bytes <= 0 || page_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": need n >= 0, heads, row_bytes, page_tokens > 0; saw n ", n,
                                                   ", heads ", heads, ", row_bytes ", row_bytes, ", page_tokens ",
                                                   page_tokens));
  }
  if (n == 0) return absl::OkStatus();
  if (!k || !v || !head_pages || !head_first_row) return absl::InvalidArgumentError(absl::StrCat(op, ": null pointer"));
  kn::PagesView pv{head_pages, head_first_row, page_tokens, row_bytes};
  // Page bases are only known on the device; vectorise when the row size keeps every row 16-byte aligned
  // relative to its page, and require pages themselves to be 16-byte aligned (pools are page-aligned).
  const bool vec = row_bytes % 16 == 0 && Al16(k) && Al16(v);
  const int64_t work = n * heads * (vec ? row_bytes / 16 : row_bytes);
  auto* kb = static_cast<uint8_t*>(k);
  auto* vb = static_cast<uint8_t*>(v);
  if (to_pages) {
    if (vec) kn::PagesKernel<true, true><<<Blocks(work), 256, 0, stream>>>(kb, vb, n, heads, pv);
    else kn::PagesKernel<false, true><<<Blocks(work), 256, 0, stream>>>(kb, vb, n, heads, pv);
  } else {
    if (vec) kn::PagesKernel<true, false><<<Blocks(work), 256, 0, stream>>>(kb, vb, n, heads, pv);
    else kn::PagesKernel<false, false><<<Blocks(work), 256, 0, stream>>>(kb, vb, n, heads, pv);
  }
  return LaunchStatus("PagesKernel");
}

absl::Status HeadMajorImpl(bool to_head_major, void* token_major, void* head_major, int64_t n, int32_t heads,
                           int64_t capacity, int64_t row0, int64_t row_bytes, cudaStream_t stream) {
  const char* op = to_head_major ? "token_major_to_head_major" : "head_major_to_token_major";
  if (n < 0 || heads <= 0 || row_bytes <= 0 || row0 < 0 || row0 + n > capacity) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": rows [", row0, ", ", row0 + n, ") of capacity ", capacity,
                                                   ", heads ", heads, ", row_bytes ", row_bytes));
  }
  if (n == 0) return absl::OkStatus();
  if (!token_major || !head_major) return absl::InvalidArgumentError(absl::StrCat(op, ": null pointer"));
  auto* tm = static_cast<uint8_t*>(token_major);
  auto* hm = static_cast<uint8_t*>(head_major);
  const bool vec = row_bytes % 16 == 0 && Al16(tm) && Al16(hm);
  const int64_t work = n * heads * (vec ? row_bytes / 16 : row_bytes);
  auto* kernel = to_head_major ? (vec ? kn::HeadMajorKernel<true, true> : kn::HeadMajorKernel<false, true>)
                               : (vec ? kn::HeadMajorKernel<true, false> : kn::HeadMajorKernel<false, false>);
  return LaunchKernel("HeadMajorKernel", kernel, dim3(Blocks(work)), dim3(256), 0, stream, tm, hm, n, heads, capacity,
                      row0, row_bytes);
}

}  // namespace

absl::Status TokenMajorToPages(const void* k, const void* v, int64_t n, int32_t heads, int64_t row_bytes,
                               int32_t page_tokens, uint8_t* const* head_pages, const int64_t* head_first_row,
                               cudaStream_t stream) {
  return PagesImpl(true, const_cast<void*>(k), const_cast<void*>(v), n, heads, row_bytes, page_tokens, head_pages,
                   head_first_row, stream);
}

absl::Status PagesToTokenMajor(uint8_t* const* head_pages, const int64_t* head_first_row, int32_t page_tokens,
                               int64_t n, int32_t heads, int64_t row_bytes, void* k, void* v, cudaStream_t stream) {
  return PagesImpl(false, k, v, n, heads, row_bytes, page_tokens, head_pages, head_first_row, stream);
}

absl::Status TokenMajorToHeadMajor(const void* src, int64_t n, int32_t heads, int64_t row_bytes, void* dst,
                                   int64_t capacity, int64_t row0, cudaStream_t stream) {
  return HeadMajorImpl(true, const_cast<void*>(src), dst, n, heads, capacity, row0, row_bytes, stream);
}

absl::Status HeadMajorToTokenMajor(const void* src, int64_t capacity, int64_t row0, int64_t n, int32_t heads,
                                   int64_t row_bytes, void* dst, cudaStream_t stream) {
  return HeadMajorImpl(false, dst, const_cast<void*>(src), n, heads, capacity, row0, row_bytes, stream);
}

absl::Status GatherRuns(const CopyRun* runs, int32_t n, int32_t ctas, int32_t threads, cudaStream_t stream) {
  static_assert(sizeof(CopyRun) == sizeof(kernels::CopyRunDesc), "CopyRun layout");
  if (n < 0 || ctas <= 0 || threads < 32 || threads > 1024 || threads % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gather_runs: n ", n, ", ctas ", ctas, ", threads ", threads, " (a multiple of 32 up to 1024)"));
  }
  if (n == 0) return absl::OkStatus();
  if (runs == nullptr) return absl::InvalidArgumentError("gather_runs: null runs");
  const int32_t warps = threads / 32;
  kernels::GatherRunsKernel<<<static_cast<unsigned>(std::min(ctas, (n + warps - 1) / warps)),
                              static_cast<unsigned>(threads), 0, stream>>>(
      reinterpret_cast<const kernels::CopyRunDesc*>(runs), n);
  return LaunchStatus("GatherRunsKernel");
}

absl::Status GatherRunsBulk(const CopyRun* runs, int32_t n, int32_t ctas, cudaStream_t stream) {
  if (n < 0 || ctas <= 0) return absl::InvalidArgumentError(absl::StrCat("gather_runs_bulk: n ", n, ", ctas ", ctas));
  if (n == 0) return absl::OkStatus();
  if (runs == nullptr) return absl::InvalidArgumentError("gather_runs_bulk: null runs");
  static const int major = [] {
    int device = 0, value = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      return 0;
    }
    return value;
  }();
  if (major < 9) {
    return absl::FailedPreconditionError("gather_runs_bulk: bulk asynchronous copies need sm_90 or newer");
  }
  static const cudaError_t attr = cudaFuncSetAttribute(
      kernels::GatherRunsBulkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kernels::kBulkSmemBytes));
  LIVEKV_RETURN_IF_ERROR(CudaStatus(attr, "cudaFuncSetAttribute(GatherRunsBulkKernel)"));
  kernels::GatherRunsBulkKernel<<<static_cast<unsigned>(std::min(ctas, n)), 32, kernels::kBulkSmemBytes, stream>>>(
      reinterpret_cast<const kernels::CopyRunDesc*>(runs), n);
  return LaunchStatus("GatherRunsBulkKernel");
}

}  // namespace cuda
}  // namespace livekv
