// File: cuda/ops/attention.h
//
// Attention launchers over KV runs (cuda/ops/attention_plan.h builds the run table):
//   DecodeAttention  one query token per sequence (batch of sequences), split-KV over the runs of each (sequence,
//                    KV head): dense paged decode and sparse decode over recalled clusters alike;
//   PrefillAttention a chunk of n tokens of one sequence over its context runs plus itself, causally.
// Both: bf16 q/k/v/out, fp32 softmax and accumulation, GQA (num_q_heads a multiple of num_kv_heads), head_dim 32,
// 64, 128 or 256 (others: INVALID_ARGUMENT naming the value), optional sliding window (a key at position p is visible
// to a query at position t iff t - p < window; the plan must then carry positions). Semantics match
// engine/cpu/cpu_attention.cc. Pointers are 16-byte aligned device memory; the launchers only enqueue work.
#ifndef LIVEKV_CUDA_OPS_ATTENTION_H_
#define LIVEKV_CUDA_OPS_ATTENTION_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "cuda/ops/attention_plan.h"

namespace livekv {
namespace cuda {

// kMma: tensor cores, row-contiguous 16-byte cp.async loads (the default). kMmaRowLoads: the same kernel with its
// first load mapping (each lane copies 8 chunks of one row: half-used sectors), head_dim 128 and 3 stages only,
// kept for comparison. kPipelined: CUDA cores, cp.async tiles shared by the CTA. kLegacy: the first kernel
// (register-staged loads, a separate combine launch).
enum class DecodeKernel { kMma, kPipelined, kLegacy, kMmaRowLoads };

struct DecodeAttentionArgs {
  const __nv_bfloat16* q = nullptr;  // [num_seqs][num_q_heads][head_dim], post-RoPE
  __nv_bfloat16* out = nullptr;      // [num_seqs][num_q_heads][head_dim]
  int32_t num_seqs = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float scale = 1.0f;                // usually 1/sqrt(head_dim)
  int64_t sliding_window = 0;        // 0: none (then the plan's query positions are not read)
  // Which kernel (see DecodeKernel). The tensor-core kernel launches with programmatic dependent launch where the
  // calling thread enabled it (cuda/runtime/launch.h); it then starts copying KV rows while the previous kernel of
  // the stream still runs, so that kernel may write q, the positions and each slot's last token (the query token's
  // own row, the last run), but no other row of the runs.
  DecodeKernel kernel = DecodeKernel::kMma;
  // Shared-memory stages per warp (kMma) or per CTA (kPipelined): 2, 3 or 4 for head_dim 128; 0: the default, 3.
  int pipeline_stages = 0;
  // Where the launch also stores q ([num_seqs][num_q_heads][head_dim], 16-byte aligned, not overlapping q), or
  // null: a snapshot for work on another stream that runs after the attention, while the next layer reuses q's
  // buffer (the recall path's speculative selection). The tensor-core kernel writes it (the first item of each
  // slot, after GridDependencyWait); the other kernels get a device-to-device copy in the stream before them.
  __nv_bfloat16* q_copy = nullptr;
};

// Bytes of workspace DecodeAttention needs for a plan of `num_items` items: per-slot arrival counters and the
// partial outputs of split slots.
size_t DecodeWorkspaceBytes(int32_t num_items, int32_t group, int32_t head_dim);

// Zeroes a decode workspace. REQUIRES before its first use: the pipelined kernel's arrival counters must start at
// zero; every launch leaves them zero again, so once per workspace (at allocation) is enough.
absl::Status InitDecodeWorkspace(void* workspace, size_t workspace_bytes, cudaStream_t stream);

// CTAs of the pipelined decode kernel one SM holds at once for this shape (0 when unknown, e.g. no device): plans
// should aim for a multiple of this times the SM count.
int DecodeCtasPerSm(int32_t head_dim, int32_t group, int stages = 0, DecodeKernel kernel = DecodeKernel::kMma);

// Attends each sequence's query to exactly the runs of its plan (include the token's own K/V as a one-row run).
// REQUIRES: plan was made for num_seqs sequences and num_kv_heads heads; plan_device holds plan.bytes();
// workspace has DecodeWorkspaceBytes(plan.num_items(), group, head_dim) bytes, initialised once by
// InitDecodeWorkspace (may be null when every slot has one item). Launches on one workspace must be ordered (one
// stream, or events). A slot with no tokens outputs zeros.
absl::Status DecodeAttention(const DecodeAttentionArgs& args, const KvPlan& plan, const void* plan_device,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The prefill kernel. kWgmma: wgmma, all warps load and compute; kWarpSpecialized: the same arithmetic on tiles of
// 128 keys, a producer warpgroup loading them. kAuto: the warp-specialized kernel on sm_90 devices for head_dim 64
// and 128 (the fastest, docs/gpu.md), mma.sync otherwise. kWgmma or kWarpSpecialized where they do not apply is
// FAILED_PRECONDITION.
enum class PrefillKernel { kAuto, kMmaSync, kWgmma, kWarpSpecialized };

struct PrefillAttentionArgs {
  const __nv_bfloat16* q = nullptr;  // [n][num_q_heads][head_dim], post-RoPE
  const __nv_bfloat16* k = nullptr;  // [n][num_kv_heads][head_dim], the chunk's own keys, post-RoPE
  const __nv_bfloat16* v = nullptr;  // [n][num_kv_heads][head_dim]
  __nv_bfloat16* out = nullptr;      // [n][num_q_heads][head_dim]
  int32_t n = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t pos0 = 0;                  // position of row 0
  float scale = 1.0f;
  int64_t sliding_window = 0;
  PrefillKernel kernel = PrefillKernel::kAuto;
};

// REQUIRES: context_plan made for one sequence with num_kv_heads heads (its context may be empty);
// context_plan_device holds its bytes.
absl::Status PrefillAttention(const PrefillAttentionArgs& args, const KvPlan& context_plan,
                              const void* context_plan_device, cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_ATTENTION_H_
