// File: engine/cpu/cpu_attention_reference.h
//
// The row-at-a-time attention CpuAttention replaced, kept only as the oracle of its test and the baseline of
// bench/cpu_attention_bench (testonly; not part of the backend). Same contract as CpuAttention: for every (KV
// head, query row) it lists the visible keys, takes one dot product per key, a softmax with std::exp, and one
// axpy per key.
#ifndef LIVEKV_ENGINE_CPU_CPU_ATTENTION_REFERENCE_H_
#define LIVEKV_ENGINE_CPU_CPU_ATTENTION_REFERENCE_H_

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "engine/backend.h"

namespace livekv {

// REQUIRES: as CpuAttention. Validates with ValidateAttentionArgs, as CpuAttention does.
absl::Status ReferenceCpuAttention(const AttentionArgs& args, ThreadPool* pool);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CPU_CPU_ATTENTION_REFERENCE_H_
