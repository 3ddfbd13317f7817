// File: engine/cpu/cpu_attention.h
//
// Grouped-query attention on the CPU over a chunk's context runs and the chunk itself (see AttentionArgs in
// engine/backend.h). fp32 arithmetic; K/V rows of the context may be fp32, bf16 or fp16 (converted to fp32 a key
// tile at a time). A flash-style blocked kernel: the query heads of one KV group and a few chunk rows at a time
// against tiles of keys, with an online softmax whose exponential is a polynomial (relative error < 1e-7);
// results match a row-at-a-time fp32 softmax to within 1e-5 of the values' magnitude. AVX2 + FMA when compiled with
// them, portable C++ otherwise.
#ifndef LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_
#define LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "engine/backend.h"

namespace livekv {

// REQUIRES: q, k, v, out are fp32 host tensors. Shapes are validated (INVALID_ARGUMENT on mismatch).
// Work is spread over `pool` by (KV head, block of rows); when that gives fewer tasks than threads (decode), the
// keys of each task are split among threads too and the partial softmaxes merged. Scratch is allocated per call.
absl::Status CpuAttention(const AttentionArgs& args, ThreadPool* pool);

// The checks CpuAttention makes before computing: OK, or INVALID_ARGUMENT naming what is wrong (ranks, shapes,
// head counts, dtypes, context runs).
absl::Status ValidateAttentionArgs(const AttentionArgs& args);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CPU_CPU_ATTENTION_H_
