// File: cuda/ops/attention_plan.h
//
// Host-side planning for the attention kernels: turns the per-KV-head run lists a KV-cache policy produced
// (engine/kv_run.h ContextKv, with device pointers) into the packed table the kernels read (cuda/kernels/
// kv_runs.cuh), and cuts every slot's tokens into split-KV work items for decode. Planning is per step and
// separate from the per-layer launches (STYLE.md): the caller uploads bytes() once into device memory it owns
// (a workspace sized at start-up) and passes that address to the launchers.
//
//   LIVEKV_ASSIGN_OR_RETURN(KvPlan plan, KvPlan::Create({&context}, num_kv_heads, head_dim, options));
//   cudaMemcpyAsync(plan_dev, plan.bytes().data(), plan.bytes().size(), cudaMemcpyHostToDevice, stream);
//   LIVEKV_RETURN_IF_ERROR(DecodeAttention(args, plan, plan_dev, workspace, workspace_bytes, stream));
//
// The host bytes must stay alive until the copy has completed (use pinned staging for a truly async copy).
// Thread-safety: a KvPlan is immutable after Create.
#ifndef LIVEKV_CUDA_OPS_ATTENTION_PLAN_H_
#define LIVEKV_CUDA_OPS_ATTENTION_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cuda/kernels/kv_runs.cuh"
#include "engine/kv_run.h"

namespace livekv {
namespace cuda {

struct KvPlanOptions {
  // Decode work items to aim for over all slots (about 2 per SM: 264 on an H100). More items split long
  // contexts finer; a slot is never cut into pieces shorter than min_tokens_per_item (except its tail). Items of
  // 256 tokens or more are rounded up to a multiple of 16 tokens.
  int32_t target_items = 264;
  int32_t min_tokens_per_item = 64;
  // Runs one item may span (<= kernels::kMaxRunsPerItem; they are staged in shared memory).
  int32_t max_runs_per_item = kernels::kMaxRunsPerItem;
};

class KvPlan {
 public:
  // contexts: one per sequence (nullptr = no cached tokens); each must have num_kv_heads heads of bf16 rows
  // whose K and V pointers are 16-byte aligned device addresses. query_positions: one per sequence, needed (and
  // then every run positional) only for sliding-window attention; empty otherwise.
  // INVALID_ARGUMENT naming the sequence, head and run for anything else (wrong dtype, head count, negative or
  // too long runs, misalignment, more than INT32_MAX tokens in a slot).
  static absl::StatusOr<KvPlan> Create(absl::Span<const ContextKv* const> contexts, int32_t num_kv_heads,
                                       int32_t head_dim, const KvPlanOptions& options = {},
                                       absl::Span<const int64_t> query_positions = {});

  // The packed table to upload (16-byte aligned sections).
  const std::vector<uint8_t>& bytes() const { return bytes_; }

  int32_t num_seqs() const { return num_seqs_; }
  int32_t num_kv_heads() const { return num_kv_heads_; }
  int32_t num_slots() const { return num_seqs_ * num_kv_heads_; }
  int32_t num_runs() const { return num_runs_; }
  int32_t num_items() const { return num_items_; }
  int32_t max_slot_tokens() const { return max_slot_tokens_; }
  bool has_positions() const { return has_positions_; }

  // Device views of the uploaded bytes. REQUIRES: device_base holds bytes() (16-byte aligned).
  kernels::RunTableView Table(const void* device_base) const;
  const kernels::DecodeItem* Items(const void* device_base) const;
  const int32_t* SlotItems(const void* device_base) const;  // [num_slots + 1]
  const int64_t* QueryPositions(const void* device_base) const;

  // Host views (for tests and debugging).
  const kernels::DecodeItem* host_items() const;
  const kernels::RunDesc* host_runs() const;

 private:
  std::vector<uint8_t> bytes_;
  int32_t num_seqs_ = 0, num_kv_heads_ = 0, num_runs_ = 0, num_items_ = 0, max_slot_tokens_ = 0;
  bool has_positions_ = false;
  size_t runs_off_ = 0, items_off_ = 0, slot_runs_off_ = 0, slot_tokens_off_ = 0, slot_items_off_ = 0,
         positions_off_ = 0;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_ATTENTION_PLAN_H_
