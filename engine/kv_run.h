// File: engine/kv_run.h
//
// How attention reads cached KV: for each KV head, a list of runs, each a stretch of K rows and the matching V
// rows that lie contiguously in the backend's memory (the head-major layout of a page, or a whole cluster laid
// out as a run of pages). Which runs to read is the KV-cache policy's decision (engine/kv_context.h); reading
// them is the attention operation's.
#ifndef LIVEKV_ENGINE_KV_RUN_H_
#define LIVEKV_ENGINE_KV_RUN_H_

#include <cstdint>
#include <vector>

#include "engine/dtype.h"

namespace livekv {

struct KvRun {
  const void* k = nullptr;  // [n][head_dim], contiguous rows, in the backend's memory
  const void* v = nullptr;  // [n][head_dim]
  int32_t n = 0;
  // Position of row 0 when the rows are consecutive positions (positional pages); -1 when they are not (a
  // semantic cluster). Only needed for sliding-window attention.
  int64_t first_position = -1;
};

// The cached tokens one layer's attention reads, per KV head.
struct ContextKv {
  DType dtype = DType::kF32;               // element type of every K and V row
  std::vector<std::vector<KvRun>> heads;   // [num_kv_heads][runs]
  // Where a one-row (decode) attention also stores its query, [num_heads][head_dim] in the activation dtype, in the
  // backend's memory; null: nowhere. In stream order after the attention it holds this step's query even once the
  // next layer has reused q's buffer: a recall context takes it for a speculative selection that runs on another
  // stream after the attention (engine/cuda/recall_kv_context.h). INVALID_ARGUMENT for chunks of several rows.
  void* query_copy = nullptr;

  int64_t TokensOfHead(size_t h) const {
    int64_t n = 0;
    for (const KvRun& r : heads[h]) n += r.n;
    return n;
  }
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_KV_RUN_H_
