#include "cuda/ops/selection.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/selection.cuh"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

int32_t Pow2(int32_t n) {
  int32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

size_t ScoreWorkspaceBytes(int32_t heads, int32_t queries, int32_t blocks) {
  return Align256(static_cast<size_t>(heads) * queries * blocks * sizeof(float)) +
         Align256(static_cast<size_t>(heads) * queries * 2 * sizeof(float));
}

absl::Status ScoreBlocks(const ScoreArgs& a, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (a.heads <= 0 || a.group <= 0 || a.rows <= 0 || a.head_dim <= 0 || a.head_dim > kn::kScoreMaxDim ||
      a.blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("score_blocks: need heads, group, rows > 0 and 0 < head_dim <= ",
                                                   kn::kScoreMaxDim, ", blocks >= 0; saw heads ", a.heads, ", group ",
                                                   a.group, ", rows ", a.rows, ", head_dim ", a.head_dim, ", blocks ",
                                                   a.blocks));
  }
  if (a.blocks == 0) return absl::OkStatus();
  if (a.q == nullptr || a.centroids == nullptr || a.pooled == nullptr) {
    return absl::InvalidArgumentError("score_blocks: null q, centroids/bounds or output");
  }
  const int32_t queries = a.rows * a.group;
  const size_t need = ScoreWorkspaceBytes(a.heads, queries, a.blocks);
  if (ws == nullptr || ws_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat("score_blocks: workspace of ", ws_bytes, " bytes, need ", need));
  }
  float* raw = static_cast<float*>(ws);
  float* stats = reinterpret_cast<float*>(static_cast<uint8_t*>(ws) +
                                          Align256(static_cast<size_t>(a.heads) * queries * a.blocks * sizeof(float)));
  kn::ScoreParams p{a.q, static_cast<int64_t>(a.heads) * a.group * a.head_dim, a.rows, a.group, a.heads, a.head_dim,
                    a.centroids, a.lo, a.blocks, raw};
  dim3 grid(static_cast<unsigned>(kn::CeilDiv(a.blocks, 8)), static_cast<unsigned>(a.heads));
  if (a.lo != nullptr) {
    kn::ScoreKernel<true><<<grid, 256, 0, stream>>>(p);
  } else {
    kn::ScoreKernel<false><<<grid, 256, 0, stream>>>(p);
  }
  LIVEKV_RETURN_IF_ERROR(LaunchStatus("ScoreKernel"));
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const bool softmax = a.pooling == ScorePooling::kMeanSoftmax;
  if (softmax) {
    kn::RowStatsKernel<<<dim3(static_cast<unsigned>(queries), static_cast<unsigned>(a.heads)), 256, 0, stream>>>(
        raw, queries, a.blocks, scale, stats);
    LIVEKV_RETURN_IF_ERROR(LaunchStatus("RowStatsKernel"));
  }
  kn::PoolKernel<<<dim3(static_cast<unsigned>(kn::CeilDiv(a.blocks, 256)), static_cast<unsigned>(a.heads)), 256, 0,
                   stream>>>(raw, softmax ? stats : nullptr, queries, a.blocks, scale, a.pooled);
  return LaunchStatus("PoolKernel");
}

size_t SelectWorkspaceBytes(int32_t heads, int32_t blocks) {
  const int32_t pow2 = Pow2(blocks);
  if (pow2 <= kn::kSelectSmemKeys) return 0;
  return Align256(static_cast<size_t>(heads) * pow2 * sizeof(uint64_t)) + Align256(static_cast<size_t>(heads) * blocks);
}

absl::Status SelectBlocks(const SelectArgs& a, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (a.heads <= 0 || a.blocks < 0 || a.budget < 0 || a.blocks > (1 << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("select_blocks: need heads > 0, blocks >= 0, budget >= 0; saw ",
                                                   a.heads, ", ", a.blocks, ", ", a.budget));
  }
  if (a.count == nullptr || a.taken == nullptr) return absl::InvalidArgumentError("select_blocks: null outputs");
  if (a.blocks == 0) {
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a.count, 0, sizeof(int32_t) * a.heads, stream));
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a.taken, 0, sizeof(int64_t) * a.heads, stream));
    return absl::OkStatus();
  }
  if (a.scores == nullptr || a.sizes == nullptr || a.chosen == nullptr) {
    return absl::InvalidArgumentError("select_blocks: null scores, sizes or chosen");
  }
  kn::SelectParams p{a.scores, a.sizes, a.blocks, Pow2(a.blocks), a.budget, nullptr, nullptr, a.chosen, a.count, a.taken};
  size_t smem = 0;
  if (p.pow2 <= kn::kSelectSmemKeys) {
    smem = static_cast<size_t>(p.pow2) * 8 + static_cast<size_t>(a.blocks);
    LIVEKV_RETURN_IF_ERROR(CudaStatus(
        cudaFuncSetAttribute(kn::SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "cudaFuncSetAttribute(SelectKernel)"));
  } else {
    const size_t need = SelectWorkspaceBytes(a.heads, a.blocks);
    if (ws == nullptr || ws_bytes < need) {
      return absl::InvalidArgumentError(absl::StrCat("select_blocks: ", a.blocks, " blocks need a workspace of ", need,
                                                     " bytes, saw ", ws_bytes));
    }
    p.keys = static_cast<uint64_t*>(ws);
    p.flags = static_cast<uint8_t*>(ws) + Align256(static_cast<size_t>(a.heads) * p.pow2 * sizeof(uint64_t));
  }
  kn::SelectKernel<<<static_cast<unsigned>(a.heads), kn::kSelectThreads, smem, stream>>>(p);
  return LaunchStatus("SelectKernel");
}

namespace {

size_t MaxSharedPerBlock() {
  static const size_t bytes = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
      return size_t{48} * 1024;
    }
    return static_cast<size_t>(v);
  }();
  return bytes;
}

// Static shared memory of PoolSelectKernel (its reductions and SelectGreedyCta's scan state), kept free.
constexpr size_t kPoolSelectStaticSmem = 2048;

template <int kF4>
absl::Status LaunchDecodeScore(const FusedSelectArgs& a, float* raw, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(kn::CeilDiv(a.blocks, kn::DecodeScoreBlocks<kF4>())),
                  static_cast<unsigned>(a.heads));
  kn::DecodeScoreKernel<kF4><<<grid, kn::kDecodeScoreThreads, 0, stream>>>(a.q, a.centroids, a.group, a.blocks, raw);
  return LaunchStatus("DecodeScoreKernel");
}

}  // namespace

size_t FusedSelectWorkspaceBytes(int32_t heads, int32_t group, int32_t blocks) {
  return Align256(static_cast<size_t>(heads) * group * std::max(blocks, 1) * sizeof(float));
}

bool FusedSelectSupported(int32_t group, int32_t head_dim, int32_t blocks) {
  if (group <= 0 || group > kn::kPoolSelectMaxQueries || blocks < 0 || blocks > (1 << 20)) return false;
  if (head_dim <= 0 || head_dim > kn::kScoreMaxDim) return false;
  return kn::PoolSelectSmemBytes(blocks, Pow2(std::max(blocks, 1))) + kPoolSelectStaticSmem <= MaxSharedPerBlock();
}

absl::Status FusedSelect(const FusedSelectArgs& a, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (a.heads <= 0 || a.budget < 0 || !FusedSelectSupported(a.group, a.head_dim, a.blocks)) {
    return absl::InvalidArgumentError(absl::StrCat("fused_select: heads ", a.heads, ", group ", a.group, " (<= ",
                                                   kn::kPoolSelectMaxQueries, "), head_dim ", a.head_dim, " (<= ",
                                                   kn::kScoreMaxDim, "), blocks ", a.blocks, ", budget ", a.budget,
                                                   ": not supported (see FusedSelectSupported)"));
  }
  if (a.q == nullptr || a.count == nullptr || a.taken == nullptr ||
      (a.blocks > 0 && (a.centroids == nullptr || a.sizes == nullptr || a.chosen == nullptr))) {
    return absl::InvalidArgumentError("fused_select: null queries, centroids, sizes or outputs");
  }
  const size_t need = FusedSelectWorkspaceBytes(a.heads, a.group, a.blocks);
  if (ws == nullptr || ws_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat("fused_select: workspace of ", ws_bytes, " bytes, need ", need));
  }
  float* raw = static_cast<float*>(ws);
  if (a.blocks > 0) {
    switch (a.head_dim) {
      case 64: LIVEKV_RETURN_IF_ERROR(LaunchDecodeScore<2>(a, raw, stream)); break;
      case 96: LIVEKV_RETURN_IF_ERROR(LaunchDecodeScore<3>(a, raw, stream)); break;
      case 128: LIVEKV_RETURN_IF_ERROR(LaunchDecodeScore<4>(a, raw, stream)); break;
      case 256: LIVEKV_RETURN_IF_ERROR(LaunchDecodeScore<8>(a, raw, stream)); break;
      default: {
        kn::ScoreParams sp{a.q, static_cast<int64_t>(a.heads) * a.group * a.head_dim, 1, a.group, a.heads,
                           a.head_dim, a.centroids, nullptr, a.blocks, raw};
        kn::ScoreKernel<false><<<dim3(static_cast<unsigned>(kn::CeilDiv(a.blocks, 8)),
                                      static_cast<unsigned>(a.heads)), 256, 0, stream>>>(sp);
        LIVEKV_RETURN_IF_ERROR(LaunchStatus("ScoreKernel"));
      }
    }
  }
  kn::PoolSelectParams p{raw, a.sizes, a.group, a.blocks, Pow2(std::max(a.blocks, 1)),
                         a.pooling == ScorePooling::kMeanSoftmax, 1.0f / std::sqrt(static_cast<float>(a.head_dim)),
                         a.budget, a.pooled, a.chosen, a.count, a.taken};
  static const cudaError_t attr =
      cudaFuncSetAttribute(kn::PoolSelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(MaxSharedPerBlock() - kPoolSelectStaticSmem));
  LIVEKV_RETURN_IF_ERROR(CudaStatus(attr, "cudaFuncSetAttribute(PoolSelectKernel)"));
  kn::PoolSelectKernel<<<static_cast<unsigned>(a.heads), kn::kPoolSelectThreads,
                         kn::PoolSelectSmemBytes(a.blocks, p.pow2), stream>>>(p);
  return LaunchStatus("PoolSelectKernel");
}

}  // namespace cuda
}  // namespace livekv
