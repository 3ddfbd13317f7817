#include "cuda/ops/kmeans.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/kmeans.cuh"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

struct Workspace {
  __nv_bfloat16* normalized;  // [heads][C][dim]: the centroids the next assignment scores against
  int32_t* counts;            // [heads][C]
  int32_t* cursor;            // [heads][C]: cluster starts, then (after the scatter) ends in `order`
  int32_t* order;             // [heads][n]: point indices sorted by label
  int32_t* control;           // [2]: labels changed by the last assignment, stop (KMeansRun's early stop)
};

Workspace Carve(void* ws, int32_t heads, int32_t n, int32_t C, int32_t dim) {
  uint8_t* b = static_cast<uint8_t*>(ws);
  const size_t rows = static_cast<size_t>(heads) * C;
  Workspace w;
  w.normalized = reinterpret_cast<__nv_bfloat16*>(b);
  b += Align256(rows * dim * sizeof(__nv_bfloat16));
  w.counts = reinterpret_cast<int32_t*>(b);
  b += Align256(rows * sizeof(int32_t));
  w.cursor = reinterpret_cast<int32_t*>(b);
  b += Align256(rows * sizeof(int32_t));
  w.order = reinterpret_cast<int32_t*>(b);
  b += Align256(static_cast<size_t>(heads) * n * sizeof(int32_t));
  w.control = reinterpret_cast<int32_t*>(b);
  return w;
}

kn::PointsView View(const KMeansPoints& p) {
  return kn::PointsView{p.data, p.head_stride, p.row_stride, p.heads, p.n, p.dim};
}

absl::Status Validate(const KMeansPoints& p, int32_t C, absl::string_view op) {
  if (p.data == nullptr || p.heads <= 0 || p.n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": need points, heads > 0 and n > 0; saw heads ", p.heads, ", n ", p.n));
  }
  if (p.dim != 64 && p.dim != 128 && p.dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dim ", p.dim, " is not supported (64, 128, 256)"));
  }
  if (p.head_stride % 8 != 0 || p.row_stride % 8 != 0 || reinterpret_cast<uintptr_t>(p.data) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": strides (", p.head_stride, ", ", p.row_stride,
                                                   ") must be multiples of 8 elements and data 16-byte aligned"));
  }
  if (C <= 0 || C > p.n) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": clusters ", C, " must be in [1, n = ", p.n, "]"));
  }
  if (static_cast<int64_t>(p.heads) > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": heads ", p.heads, " > 65535"));
  }
  return absl::OkStatus();
}

absl::Status CheckWorkspace(void* ws, size_t bytes, const KMeansPoints& p, int32_t C, absl::string_view op) {
  const size_t need = KMeansWorkspaceBytes(p.heads, p.n, C, p.dim);
  if (ws == nullptr || bytes < need || reinterpret_cast<uintptr_t>(ws) % 256 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": workspace of ", bytes, " bytes (256-byte aligned) needed ", need));
  }
  return absl::OkStatus();
}

// Whether the assignment runs AssignWgmmaKernel on the current device.
absl::StatusOr<bool> UseWgmma(KMeansAssignKernel kernel) {
  if (kernel == KMeansAssignKernel::kMmaSync) return false;
  LIVEKV_ASSIGN_OR_RETURN(const bool sm90, CurrentDeviceIsSm90());
  if (kernel == KMeansAssignKernel::kWgmma && !sm90) {
    return absl::FailedPreconditionError("kmeans: the wgmma assignment needs an sm_90 device");
  }
  return sm90;
}

template <int kD>
absl::Status LaunchAssign(const kn::PointsView& v, const __nv_bfloat16* normalized, int32_t C, int32_t* labels,
                          int32_t* counts, int32_t* control, bool wgmma, cudaStream_t stream) {
  if (wgmma) {
    constexpr size_t smem = kn::WgAssignSharedBytes<kD>();
    LIVEKV_RETURN_IF_ERROR(CudaStatus(cudaFuncSetAttribute(kn::AssignWgmmaKernel<kD>,
                                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                           static_cast<int>(smem)),
                                      "cudaFuncSetAttribute(AssignWgmmaKernel)"));
    dim3 grid(static_cast<unsigned>(kn::CeilDiv(v.n, kn::kWgAssignRows)), static_cast<unsigned>(v.heads));
    return LaunchKernel("AssignWgmmaKernel", kn::AssignWgmmaKernel<kD>, grid, dim3(kn::kWgAssignThreads), smem, stream,
                        v, normalized, C, labels, counts, control);
  }
  constexpr size_t smem = kn::AssignSharedBytes<kD>();
  LIVEKV_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(kn::AssignKernel<kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
      "cudaFuncSetAttribute(AssignKernel)"));
  dim3 grid(static_cast<unsigned>(kn::CeilDiv(v.n, kn::AssignShape<kD>::kRows)), static_cast<unsigned>(v.heads));
  return LaunchKernel("AssignKernel", kn::AssignKernel<kD>, grid, dim3(kn::kAssignThreads), smem, stream, v, normalized,
                      C, labels, counts, control);
}

// Normalises `centroids` into w.normalized (the assignment's operand).
absl::Status NormalizeImpl(const KMeansPoints& p, const float* centroids, int32_t C, const Workspace& w,
                           const int32_t* control, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.heads) * C;
  return LaunchKernel("NormalizeRowsKernel", kn::NormalizeRowsKernel, dim3(static_cast<unsigned>(kn::CeilDiv(rows, 8))),
                      dim3(256), 0, stream, centroids, w.normalized, rows, p.dim, control);
}

// Assigns against w.normalized. counts: null, or w.counts (zero) to receive the update's histogram. control: null,
// or w.control for the early stop (the kernels skip their work once it says stop).
absl::Status AssignImpl(const KMeansPoints& p, int32_t C, int32_t* labels, int32_t* counts, const Workspace& w,
                        int32_t* control, bool wgmma, cudaStream_t stream) {
  const kn::PointsView v = View(p);
  switch (p.dim) {
    case 64: return LaunchAssign<64>(v, w.normalized, C, labels, counts, control, wgmma, stream);
    case 128: return LaunchAssign<128>(v, w.normalized, C, labels, counts, control, wgmma, stream);
    default: return LaunchAssign<256>(v, w.normalized, C, labels, counts, control, wgmma, stream);
  }
}

dim3 PointGrid(const KMeansPoints& p) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(kn::CeilDiv(p.n, 256), 1, 1024)),
              static_cast<unsigned>(p.heads));
}

// counts[h][c] = members of cluster c under `labels`.
absl::Status CountImpl(const KMeansPoints& p, const int32_t* labels, int32_t C, int32_t* counts, const int32_t* control,
                       cudaStream_t stream) {
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, static_cast<size_t>(p.heads) * C * sizeof(int32_t), stream));
  return LaunchKernel("HistogramKernel", kn::HistogramKernel, PointGrid(p), dim3(256), 0, stream, labels, p.n, C, counts,
                      control);
}

template <int kD>
absl::Status LaunchMean(const KMeansPoints& p, int32_t C, float* centroids, int32_t* sizes, const Workspace& w,
                        const int32_t* control, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.heads) * C;
  return LaunchKernel("MeanKernel", kn::MeanKernel<kD>, dim3(static_cast<unsigned>(kn::CeilDiv(rows, kn::kMeanWarps))),
                      dim3(32 * kn::kMeanWarps), 0, stream, View(p), w.order, w.counts, w.cursor, C, centroids,
                      w.normalized, sizes, control);
}

// centroids = means of the members under `labels` (empty clusters unchanged), w.normalized = their normalised
// copies, sizes (if not null) = member counts. counted: w.counts already holds the labels' histogram (the
// assignment made it); otherwise it is computed here. w.counts is zero after.
absl::Status UpdateImpl(const KMeansPoints& p, const int32_t* labels, int32_t C, float* centroids, int32_t* sizes,
                        const Workspace& w, const int32_t* control, bool counted, cudaStream_t stream) {
  if (!counted) LIVEKV_RETURN_IF_ERROR(CountImpl(p, labels, C, w.counts, control, stream));
  LIVEKV_RETURN_IF_ERROR(LaunchKernel("ScanKernel", kn::ScanKernel, dim3(static_cast<unsigned>(p.heads)),
                                      dim3(kn::kScanThreads), 0, stream, w.counts, C, w.cursor, control));
  if (C <= kn::kScatterRankedMaxClusters) {  // 2 C int32 of shared memory: 4 KB at most
    const dim3 grid(static_cast<unsigned>(kn::CeilDiv(p.n, kn::kScatterPoints)), static_cast<unsigned>(p.heads));
    const size_t smem = 2 * static_cast<size_t>(C) * sizeof(int32_t);
    LIVEKV_RETURN_IF_ERROR(LaunchKernel("ScatterRankedKernel", kn::ScatterRankedKernel, grid,
                                        dim3(kn::kScatterThreads), smem, stream, labels, p.n, C, w.cursor, w.order,
                                        control));
  } else {
    LIVEKV_RETURN_IF_ERROR(LaunchKernel("ScatterKernel", kn::ScatterKernel, PointGrid(p), dim3(256), 0, stream, labels,
                                        p.n, C, w.cursor, w.order, control));
  }
  switch (p.dim) {
    case 64: return LaunchMean<64>(p, C, centroids, sizes, w, control, stream);
    case 128: return LaunchMean<128>(p, C, centroids, sizes, w, control, stream);
    default: return LaunchMean<256>(p, C, centroids, sizes, w, control, stream);
  }
}

}  // namespace

size_t KMeansWorkspaceBytes(int32_t heads, int32_t n, int32_t C, int32_t dim) {
  const size_t rows = static_cast<size_t>(heads) * C;
  return Align256(rows * dim * sizeof(__nv_bfloat16)) + 2 * Align256(rows * sizeof(int32_t)) +
         Align256(static_cast<size_t>(heads) * n * sizeof(int32_t)) + 256;
}

absl::Status KMeansInitFromPoints(const KMeansPoints& p, const int32_t* rows, int32_t C, float* centroids,
                                  cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(Validate(p, C, "kmeans_init"));
  if (rows == nullptr || centroids == nullptr) return absl::InvalidArgumentError("kmeans_init: null rows or centroids");
  const int64_t total = static_cast<int64_t>(p.heads) * C;
  const ScopedPdl pdl(true);
  return LaunchKernel("GatherPointsKernel", kn::GatherPointsKernel, dim3(static_cast<unsigned>(kn::CeilDiv(total, 8))),
                      dim3(256), 0, stream, View(p), rows, C, centroids);
}

absl::Status KMeansAssign(const KMeansPoints& p, const float* centroids, int32_t C, int32_t* labels, void* ws,
                          size_t ws_bytes, cudaStream_t stream, KMeansAssignKernel kernel) {
  LIVEKV_RETURN_IF_ERROR(Validate(p, C, "kmeans_assign"));
  LIVEKV_RETURN_IF_ERROR(CheckWorkspace(ws, ws_bytes, p, C, "kmeans_assign"));
  if (centroids == nullptr || labels == nullptr) return absl::InvalidArgumentError("kmeans_assign: null centroids or labels");
  LIVEKV_ASSIGN_OR_RETURN(const bool wgmma, UseWgmma(kernel));
  const Workspace w = Carve(ws, p.heads, p.n, C, p.dim);
  const ScopedPdl pdl(true);  // every k-means kernel waits for its predecessor first (kmeans.cuh)
  LIVEKV_RETURN_IF_ERROR(NormalizeImpl(p, centroids, C, w, nullptr, stream));
  return AssignImpl(p, C, labels, nullptr, w, nullptr, wgmma, stream);
}

absl::Status KMeansUpdate(const KMeansPoints& p, const int32_t* labels, int32_t C, float* centroids, int32_t* sizes,
                          void* ws, size_t ws_bytes, cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(Validate(p, C, "kmeans_update"));
  LIVEKV_RETURN_IF_ERROR(CheckWorkspace(ws, ws_bytes, p, C, "kmeans_update"));
  if (centroids == nullptr || labels == nullptr) return absl::InvalidArgumentError("kmeans_update: null centroids or labels");
  const ScopedPdl pdl(true);
  return UpdateImpl(p, labels, C, centroids, sizes, Carve(ws, p.heads, p.n, C, p.dim), nullptr, /*counted=*/false,
                    stream);
}

absl::Status KMeansRun(const KMeansPoints& p, int32_t C, int32_t iterations, float* centroids, int32_t* labels,
                       int32_t* sizes, void* ws, size_t ws_bytes, cudaStream_t stream, double stop_fraction,
                       KMeansAssignKernel kernel) {
  LIVEKV_RETURN_IF_ERROR(Validate(p, C, "kmeans_run"));
  LIVEKV_RETURN_IF_ERROR(CheckWorkspace(ws, ws_bytes, p, C, "kmeans_run"));
  if (iterations < 0) return absl::InvalidArgumentError(absl::StrCat("kmeans_run: iterations ", iterations));
  if (centroids == nullptr || labels == nullptr) return absl::InvalidArgumentError("kmeans_run: null centroids or labels");
  if (!(stop_fraction >= 0.0 && stop_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans_run: stop fraction ", stop_fraction, " not in [0, 1)"));
  }
  LIVEKV_ASSIGN_OR_RETURN(const bool wgmma, UseWgmma(kernel));
  const Workspace w = Carve(ws, p.heads, p.n, C, p.dim);
  const ScopedPdl pdl(true);
  int32_t* control = stop_fraction > 0.0 ? w.control : nullptr;
  if (control != nullptr) LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(control, 0, 2 * sizeof(int32_t), stream));
  const int64_t threshold = static_cast<int64_t>(stop_fraction * static_cast<double>(p.heads) * p.n);
  // Each update leaves the normalised centroids for the next assignment: only the initial ones are normalised here.
  // Each assignment adds its labels' histogram to w.counts, which each update reads and leaves zero.
  LIVEKV_RETURN_IF_ERROR(NormalizeImpl(p, centroids, C, w, nullptr, stream));
  const size_t rows = static_cast<size_t>(p.heads) * C;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(w.counts, 0, rows * sizeof(int32_t), stream));
  for (int32_t it = 0; it < iterations; ++it) {
    LIVEKV_RETURN_IF_ERROR(AssignImpl(p, C, labels, w.counts, w, control, wgmma, stream));
    if (control != nullptr) {  // the first assignment has no previous labels to compare with: never stop there
      LIVEKV_RETURN_IF_ERROR(LaunchKernel("KMeansCheckKernel", kn::KMeansCheckKernel, dim3(1), dim3(1), 0, stream, control,
                                          static_cast<int64_t>(it == 0 ? -1 : threshold)));
    }
    LIVEKV_RETURN_IF_ERROR(UpdateImpl(p, labels, C, centroids, nullptr, w, control, /*counted=*/true, stream));
  }
  // Once stopped, the labels are already the assignment against the (then unchanged) centroids, and w.counts their
  // histogram (the stopped update did not consume it; later assignments skip their work).
  LIVEKV_RETURN_IF_ERROR(AssignImpl(p, C, labels, w.counts, w, control, wgmma, stream));
  if (sizes == nullptr) return absl::OkStatus();
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sizes, w.counts, rows * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace livekv
