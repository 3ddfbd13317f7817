// File: engine/cpu/cpu_attention.h
//
// Grouped-query attention on the CPU over a chunk's context runs and the chunk itself (see AttentionArgs in
// engine/backend.h). fp32 arithmetic; K/V rows of the context may be fp32, bf16 or fp16.
#ifndef LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_
#define LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "engine/backend.h"

namespace livekv {

// REQUIRES: q, k, v, out are fp32 host tensors. Shapes are validated (INVALID_ARGUMENT on mismatch).
absl::Status CpuAttention(const AttentionArgs& args, ThreadPool* pool);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_
