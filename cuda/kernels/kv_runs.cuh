// File: cuda/kernels/kv_runs.cuh
//
// The device form of engine/kv_run.h's ContextKv, shared by the attention kernels: for each "slot" (one KV head
// of one sequence: slot = seq * num_kv_heads + kv_head) a list of runs, each a contiguous stretch of K rows and
// the matching V rows anywhere in device memory (a page, a run of pages, a recalled cluster, one big dense
// buffer, or the current token's own row). A slot's tokens are numbered 0 .. slot_tokens - 1 in run order
// ("flattened" tokens); RunDesc::token_begin is the number of tokens of the slot before the run.
//
// Built on the host by cuda/ops/attention_plan.h and uploaded once per step; the kernels only read it. The structs
// are plain data, so this header also compiles as host C++ (the device helpers are nvcc-only).
#ifndef LIVEKV_CUDA_KERNELS_KV_RUNS_CUH_
#define LIVEKV_CUDA_KERNELS_KV_RUNS_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace livekv {
namespace cuda {
namespace kernels {

using bf16 = __nv_bfloat16;

struct RunDesc {              // 32 bytes
  const bf16* k;              // [n][head_dim], 16-byte aligned
  const bf16* v;              // [n][head_dim], 16-byte aligned
  int32_t n;                  // rows, > 0
  int32_t token_begin;        // flattened index of row 0 within the slot
  int64_t first_position;     // sequence position of row 0 for positional runs, -1 otherwise
};

// A piece of one slot's flattened tokens, processed by one CTA of the split-KV decode kernel.
struct DecodeItem {           // 32 bytes
  int32_t slot;               // seq * num_kv_heads + kv_head
  int32_t run_begin;          // index into runs of the run holding token_begin
  int32_t run_count;          // runs overlapping [token_begin, token_end); <= kMaxRunsPerItem
  int32_t token_begin;        // flattened tokens [token_begin, token_end) of the slot; may be empty
  int32_t token_end;
  int32_t num_slot_items;     // items of this slot (1: the CTA writes the output directly)
  int32_t first_slot_item;    // index of the slot's first item (a slot's items are consecutive)
  int32_t pad;
};

constexpr int kMaxRunsPerItem = 128;

struct RunTableView {
  const RunDesc* runs;        // [num_runs], grouped by slot
  const int32_t* slot_runs;   // [num_slots + 1]: runs of slot s are [slot_runs[s], slot_runs[s + 1])
  const int32_t* slot_tokens; // [num_slots]
};

#ifdef __CUDACC__
// Index in [lo, hi) of the last run whose token_begin <= token. REQUIRES: runs[lo].token_begin <= token.
__device__ __forceinline__ int FindRun(const RunDesc* runs, int lo, int hi, int token) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (runs[mid].token_begin <= token) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Same over a shared-memory copy of the token_begin values.
__device__ __forceinline__ int FindRunIn(const int32_t* token_begin, int count, int token) {
  int lo = 0, hi = count;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (token_begin[mid] <= token) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}
#endif  // __CUDACC__

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_KV_RUNS_CUH_
