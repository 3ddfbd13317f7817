// File: cuda/ops/kmeans.h
//
// Batched spherical k-means over the keys of many KV heads (cuda/kernels/kmeans.cuh): each head is clustered
// independently into C clusters (C unbounded), all heads in the same launches. The caller picks the initial
// centroids (e.g. distinct sampled points, KMeansInitFromPoints) and owns the workspace.
//
//   KMeansPoints pts{keys, /*head_stride=*/dim, /*row_stride=*/heads * dim, heads, n, dim};  // token-major keys
//   LIVEKV_RETURN_IF_ERROR(KMeansInitFromPoints(pts, init_rows, C, centroids, stream));
//   LIVEKV_RETURN_IF_ERROR(KMeansRun(pts, C, /*iterations=*/20, centroids, labels, sizes, ws, ws_bytes, stream));
//
// Numerics: assignment on bf16 tensor cores (wgmma on Hopper, mma.sync elsewhere) against bf16-rounded normalised centroids (scores within 2^-9 |p| of
// fp32; near-ties may go either way), update as an fp32 sum per cluster after a counting sort by label (members
// summed in nondeterministic order).
#ifndef LIVEKV_CUDA_OPS_KMEANS_H_
#define LIVEKV_CUDA_OPS_KMEANS_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

struct KMeansPoints {
  const __nv_bfloat16* data = nullptr;  // point i of head h at data + h * head_stride + i * row_stride
  int64_t head_stride = 0;              // elements; multiple of 8 (16-byte aligned rows)
  int64_t row_stride = 0;               // elements; multiple of 8
  int32_t heads = 0;
  int32_t n = 0;                        // points per head, >= 1
  int32_t dim = 0;                      // 64, 128 or 256
};

// Workspace for n points and C clusters per head: normalised bf16 centroids, the update's counting sort (int32
// counts and cursors per cluster, the sorted point indices) and the early stop's state.
size_t KMeansWorkspaceBytes(int32_t heads, int32_t n, int32_t C, int32_t dim);

// centroids[h][c] = point(h, rows[h][c]) as fp32. rows: device int32 [heads][C], each in [0, n).
absl::Status KMeansInitFromPoints(const KMeansPoints& points, const int32_t* rows, int32_t C, float* centroids,
                                  cudaStream_t stream);

// The assignment's kernel. kAuto: wgmma on sm_90 devices (Hopper; 1.35x the mma.sync kernel's rate on an H100,
// docs/gpu.md), mma.sync elsewhere. kWgmma on another device is FAILED_PRECONDITION. Both give the same labels
// (the same bf16 products summed in fp32; only the summation order inside the tensor cores may differ).
enum class KMeansAssignKernel { kAuto, kMmaSync, kWgmma };

// labels[h][i] = argmax_c cos(point(h, i), centroids[h][c]), ties to the lower c. centroids fp32 [heads][C][dim];
// labels int32 [heads][n].
absl::Status KMeansAssign(const KMeansPoints& points, const float* centroids, int32_t C, int32_t* labels,
                          void* workspace, size_t workspace_bytes, cudaStream_t stream,
                          KMeansAssignKernel kernel = KMeansAssignKernel::kAuto);

// centroids[h][c] = mean of the points labelled c (unchanged for empty clusters); sizes[h][c] = member count
// (sizes may be null).
absl::Status KMeansUpdate(const KMeansPoints& points, const int32_t* labels, int32_t C, float* centroids,
                          int32_t* sizes, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// `iterations` rounds of assign + update starting from `centroids`, then a final assign (ClusterKV's final
// relabel): on return labels are the assignment against the returned centroids and sizes[h][c] counts them.
// stop_fraction > 0: converged early once an assignment changes at most stop_fraction * heads * n labels from the
// previous one (over all heads); the remaining rounds are skipped on the device (no host sync: their kernels are
// launched and return at once), and the labels of that assignment, which match the centroids, are returned.
absl::Status KMeansRun(const KMeansPoints& points, int32_t C, int32_t iterations, float* centroids, int32_t* labels,
                       int32_t* sizes, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                       double stop_fraction = 0.0, KMeansAssignKernel kernel = KMeansAssignKernel::kAuto);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_KMEANS_H_
