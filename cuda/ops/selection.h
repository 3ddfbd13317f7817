// File: cuda/ops/selection.h
//
// Recall selection on the GPU, per KV head (kvcache/selection.h's functions, batched over heads):
//   ScoreBlocks   pooled scores of C blocks (cluster centroids, or Quest page bounds) for the query vectors of each
//                 KV head's group (rows x group), pooled by mean score or mean softmax;
//   SelectBlocks  greedy budgeted selection by descending score (ties to the lower index), chosen indices ascending.
// Both enqueue on `stream` and use a caller-owned workspace (sizes below).
#ifndef LIVEKV_CUDA_OPS_SELECTION_H_
#define LIVEKV_CUDA_OPS_SELECTION_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

enum class ScorePooling {
  kMeanScore,    // mean over queries of the raw scores (FreeKV's system kernel)
  kMeanSoftmax,  // mean over queries of the softmax over blocks with scale 1/sqrt(head_dim)
};

struct ScoreArgs {
  const __nv_bfloat16* q = nullptr;  // [rows][heads * group][head_dim] (post-RoPE queries of a chunk)
  int32_t rows = 1;                  // query rows (1 for decode)
  int32_t heads = 0;                 // KV heads
  int32_t group = 1;                 // query heads per KV head
  int32_t head_dim = 0;              // <= 256
  const float* centroids = nullptr;  // ClusterKV: [heads][blocks][head_dim]; or Quest's per-channel key maxima
  const float* lo = nullptr;         // Quest: per-channel key minima [heads][blocks][head_dim]; null for centroids
  int32_t blocks = 0;                // C (0: nothing to score)
  ScorePooling pooling = ScorePooling::kMeanSoftmax;
  float* pooled = nullptr;           // out: [heads][blocks]
};

size_t ScoreWorkspaceBytes(int32_t heads, int32_t queries_per_head, int32_t blocks);

// With args.lo set, scores are Quest's upper bounds sum_d max(q_d hi_d, q_d lo_d); else q . centroid.
absl::Status ScoreBlocks(const ScoreArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

struct SelectArgs {
  const float* scores = nullptr;  // [heads][blocks]
  const int32_t* sizes = nullptr; // [heads][blocks] tokens per block, >= 0
  int32_t heads = 0;
  int32_t blocks = 0;
  int64_t budget = 0;             // tokens per head
  int32_t* chosen = nullptr;      // out [heads][blocks]: chosen block indices ascending, then -1
  int32_t* count = nullptr;       // out [heads]
  int64_t* taken = nullptr;       // out [heads]: tokens of the chosen blocks
};

// Workspace for SelectBlocks: 0 when the keys fit in shared memory (blocks <= 8192), else the sort buffers.
size_t SelectWorkspaceBytes(int32_t heads, int32_t blocks);

absl::Status SelectBlocks(const SelectArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// A decode step's selection: ScoreBlocks for one query row against centroids, then SelectBlocks, in two launches
// (the scoring spread over the GPU for the bytes; then per KV head one CTA that pools into shared memory, sorts and
// picks) instead of four, with the same results (pooled scores within fp32 rounding of ScoreBlocks', the same
// greedy rule on them). The outputs may be mapped pinned host memory (written directly; visible to the host once
// the stream passes the launch). Workspace: FusedSelectWorkspaceBytes (the raw scores).
struct FusedSelectArgs {
  const __nv_bfloat16* q = nullptr;  // [heads * group][head_dim]: one row of post-RoPE queries
  int32_t heads = 0;
  int32_t group = 1;
  int32_t head_dim = 0;              // <= 256
  const float* centroids = nullptr;  // [heads][blocks][head_dim]
  const int32_t* sizes = nullptr;    // [heads][blocks] tokens per block, >= 0
  int32_t blocks = 0;
  ScorePooling pooling = ScorePooling::kMeanSoftmax;
  int64_t budget = 0;                // tokens per head
  float* pooled = nullptr;           // optional out [heads][blocks]
  int32_t* chosen = nullptr;         // out [heads][blocks]: chosen block indices ascending, then -1
  int32_t* count = nullptr;          // out [heads]
  int64_t* taken = nullptr;          // out [heads]
};

size_t FusedSelectWorkspaceBytes(int32_t heads, int32_t group, int32_t blocks);

// Whether FusedSelect takes these sizes on the current device: group <= 8, head_dim <= 256, and the sort keys of
// `blocks` in one CTA's shared memory (up to ~16,000 on an H100).
bool FusedSelectSupported(int32_t group, int32_t head_dim, int32_t blocks);

absl::Status FusedSelect(const FusedSelectArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_SELECTION_H_
