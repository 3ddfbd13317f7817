// File: cuda/kernels/kv_layout.cuh
//
// Exact data movement for the KV cache: row gather/scatter by index lists, and conversion between the
// token-major layout the model produces ([tokens][kv_heads][row]) and the head-major page layout of
// kvcache/page_layout.h (per (layer, KV head) page: P K rows then P V rows) or a dense head-major buffer
// ([heads][capacity][row]). Rows are opaque bytes (any dtype); copies are 16-byte vectors when every address and
// the row size allow it, bytes otherwise.
#ifndef LIVEKV_CUDA_KERNELS_KV_LAYOUT_CUH_
#define LIVEKV_CUDA_KERNELS_KV_LAYOUT_CUH_

#include "cuda/kernels/common.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

template <bool kVec>
__device__ __forceinline__ void CopyRow(uint8_t* dst, const uint8_t* src, int64_t unit, int64_t units_per_row) {
  if (kVec) {
    reinterpret_cast<uint4*>(dst)[unit] = reinterpret_cast<const uint4*>(src)[unit];
  } else {
    dst[unit] = src[unit];
  }
  (void)units_per_row;
}

// dst row (dst_index ? dst_index[i] : i) = src row (src_index ? src_index[i] : i), for i < n; a negative index
// skips the row. Row r of src starts at src + r * src_stride (bytes), likewise dst.
struct CopyRowsView {
  const uint8_t* src;
  uint8_t* dst;
  const int32_t* src_index;
  const int32_t* dst_index;
  int64_t n, row_bytes, src_stride, dst_stride;
};

// Grid-strided over n * units (unit = 16 bytes when kVec, else 1 byte).
template <bool kVec>
static __global__ void CopyRowsKernel(CopyRowsView v) {
  const int64_t units = kVec ? v.row_bytes / 16 : v.row_bytes;
  const int64_t total = v.n * units;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = x / units, u = x % units;
    const int64_t s = v.src_index ? v.src_index[i] : i;
    const int64_t d = v.dst_index ? v.dst_index[i] : i;
    if (s < 0 || d < 0) continue;
    CopyRow<kVec>(v.dst + d * v.dst_stride, v.src + s * v.src_stride, u, units);
  }
}

// Token-major k, v [n][heads][row] <-> each head's run of pages: head h's rows start at row first_row[h] of the
// page run at pages[h] (row r in page r / P at in-page row r % P; K rows then V rows).
struct PagesView {
  uint8_t* const* pages;     // [heads] device pointers to each head's first page
  const int64_t* first_row;  // [heads]
  int32_t page_tokens;       // P
  int64_t row_bytes;
};

template <bool kVec, bool kToPages>
static __global__ void PagesKernel(uint8_t* k, uint8_t* v, int64_t n, int32_t heads, PagesView pv) {
  const int64_t units = kVec ? pv.row_bytes / 16 : pv.row_bytes;
  const int64_t total = n * heads * units;
  const int64_t page_bytes = 2 * static_cast<int64_t>(pv.page_tokens) * pv.row_bytes;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t u = x % units, th = x / units;
    const int64_t t = th / heads, h = th % heads;
    const int64_t r = pv.first_row[h] + t;
    uint8_t* page = pv.pages[h] + (r / pv.page_tokens) * page_bytes;
    const int64_t in = r % pv.page_tokens;
    uint8_t* krow = page + in * pv.row_bytes;
    uint8_t* vrow = page + (pv.page_tokens + in) * pv.row_bytes;
    uint8_t* ktok = k + th * pv.row_bytes;
    uint8_t* vtok = v + th * pv.row_bytes;
    if (kToPages) {
      CopyRow<kVec>(krow, ktok, u, units);
      CopyRow<kVec>(vrow, vtok, u, units);
    } else {
      CopyRow<kVec>(ktok, krow, u, units);
      CopyRow<kVec>(vtok, vrow, u, units);
    }
  }
}

// Token-major [n][heads][row] <-> dense head-major [heads][capacity][row] at rows [row0, row0 + n).
template <bool kVec, bool kToHeadMajor>
static __global__ void HeadMajorKernel(uint8_t* token_major, uint8_t* head_major, int64_t n, int32_t heads,
                                int64_t capacity, int64_t row0, int64_t row_bytes) {
  GridDependencyWait();  // may be launched programmatically (cuda/runtime/launch.h)
  GridDependentsLaunch();
  const int64_t units = kVec ? row_bytes / 16 : row_bytes;
  const int64_t total = n * heads * units;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t u = x % units, th = x / units;
    const int64_t t = th / heads, h = th % heads;
    uint8_t* tm = token_major + th * row_bytes;
    uint8_t* hm = head_major + (h * capacity + row0 + t) * row_bytes;
    if (kToHeadMajor) {
      CopyRow<kVec>(hm, tm, u, units);
    } else {
      CopyRow<kVec>(tm, hm, u, units);
    }
  }
}

// Copies of whole runs (the recall of cluster pages): one warp per run at a time, 16-byte loads and stores. With
// sources in mapped pinned host memory this is a zero-copy gather over PCIe by the SMs (a few CTAs saturate the
// link, performance.md §1.2); `runs` itself may live there too.
struct CopyRunDesc {
  const uint8_t* src;
  uint8_t* dst;
  uint64_t bytes;  // multiple of 16; src and dst 16-byte aligned
};

// grid: any; block: a multiple of 32.
static __global__ void GatherRunsKernel(const CopyRunDesc* runs, int32_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; i < n; i += warps) {
    const CopyRunDesc r = runs[i];
    const uint4* s = reinterpret_cast<const uint4*>(r.src);
    uint4* d = reinterpret_cast<uint4*>(r.dst);
    const uint64_t units = r.bytes / 16;
    uint64_t u = lane;
    // Four loads in flight per lane before the stores (PCIe latency is microseconds).
    for (; u + 96 < units; u += 128) {
      const uint4 a = s[u], b = s[u + 32], c = s[u + 64], e = s[u + 96];
      d[u] = a;
      d[u + 32] = b;
      d[u + 64] = c;
      d[u + 96] = e;
    }
    for (; u < units; u += 32) d[u] = s[u];
  }
}

// The same copies by the Tensor Memory Accelerator (bulk asynchronous copies, sm_90): one warp per CTA, whose lane 0
// streams its share of the runs (a contiguous range of the list) through kBulkStages shared-memory buffers in chunks
// of up to kBulkChunk bytes: cp.async.bulk global -> shared completing on a per-stage mbarrier, then
// cp.async.bulk shared -> global. The loads of kBulkStages chunks are in flight at once (128 KiB per CTA); the SMs'
// load/store pipes and registers are not involved. The warp reads the run list 32 descriptors at a time (one per
// lane) and passes them to lane 0 by shuffles.
constexpr int kBulkStages = 8;
constexpr uint32_t kBulkChunk = 16384;
constexpr size_t kBulkSmemBytes = static_cast<size_t>(kBulkStages) * kBulkChunk;

// grid: any (CTA b copies runs [b n / grid, (b + 1) n / grid)); block: 32; dynamic shared memory kBulkSmemBytes.
static __global__ void __launch_bounds__(32) GatherRunsBulkKernel(const CopyRunDesc* runs, int32_t n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t bar[kBulkStages];
  const int lane = threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * n / gridDim.x;
  const int64_t last = static_cast<int64_t>(blockIdx.x + 1) * n / gridDim.x;
  if (lane == 0) {
    for (int s = 0; s < kBulkStages; ++s) MbarrierInit(&bar[s], 1);
    FenceMbarrierInit();
  }
  __syncwarp();
  // Lane 0's pipeline state: chunks issued (loaded into stage issued % kBulkStages) and chunks stored; per stage the
  // destination and size of the chunk in it.
  uint64_t issued = 0, stored = 0;
  uint8_t* stage_dst[kBulkStages] = {};
  uint32_t stage_bytes[kBulkStages] = {};
  // Stores the oldest loaded chunk once its load has landed. Its stage is reused only after the store has read it
  // (wait_group.read before the next load into it).
  auto store_oldest = [&]() {
    const int st = static_cast<int>(stored % kBulkStages);
    const uint32_t parity = static_cast<uint32_t>((stored / kBulkStages) & 1);
    MbarrierWait(&bar[st], parity);
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(stage_dst[st]),
                 "r"(SharedAddress(smem + static_cast<size_t>(st) * kBulkChunk)), "r"(stage_bytes[st])
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    ++stored;
  };
  for (int64_t base = first; base < last; base += 32) {
    CopyRunDesc mine{};
    if (base + lane < last) mine = runs[base + lane];
    const int count = static_cast<int>(last - base < 32 ? last - base : 32);
    for (int k = 0; k < count; ++k) {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine.src), k));
      uint8_t* dst = reinterpret_cast<uint8_t*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine.dst), k));
      const uint64_t bytes = __shfl_sync(0xffffffffu, mine.bytes, k);
      if (lane != 0) continue;
      for (uint64_t off = 0; off < bytes; off += kBulkChunk) {
        const uint32_t chunk = static_cast<uint32_t>(bytes - off < kBulkChunk ? bytes - off : kBulkChunk);
        if (issued - stored == kBulkStages) {
          store_oldest();
          // The stage the next load goes to held the chunk just stored: wait until that store has read it.
          asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
        }
        const int st = static_cast<int>(issued % kBulkStages);
        const uint32_t b = SharedAddress(&bar[st]);
        stage_dst[st] = dst + off;
        stage_bytes[st] = chunk;
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(chunk) : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                SharedAddress(smem + static_cast<size_t>(st) * kBulkChunk)),
            "l"(src + off), "r"(chunk), "r"(b)
            : "memory");
        ++issued;
      }
    }
  }
  if (lane == 0) {
    while (stored < issued) store_oldest();
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // the stores are complete (and visible) at exit
  }
#endif
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_KV_LAYOUT_CUH_
