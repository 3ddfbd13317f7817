// File: kvcache/selection.h
//
// Ranking cached blocks (clusters or positional pages) of one KV head for a set of query vectors, and picking
// blocks greedily under a token budget. Pure functions over host fp32 data; the policies compose them.
//
// The query vectors of a KV head are those of its query-head group, for every row of the chunk:
//   q(row, j) = q + row * row_stride + j * head_dim,  row < rows, j < group.
#ifndef LIVEKV_KVCACHE_SELECTION_H_
#define LIVEKV_KVCACHE_SELECTION_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "kvcache/policy_options.h"

namespace livekv {

struct QueryGroup {
  const float* q = nullptr;  // first query vector of the group in row 0
  int32_t rows = 1;
  int64_t row_stride = 0;    // floats between rows (num_heads * head_dim)
  int32_t group = 1;         // query heads per KV head
  int32_t head_dim = 0;
  int32_t count() const { return rows * group; }
  const float* vec(int32_t i) const { return q + (i / group) * row_stride + (i % group) * head_dim; }
};

// scores[c] for C centroids [C][head_dim]: each query's dot product with each centroid (ClusterKV scores
// un-normalised q·c), pooled over the group's queries (mean of raw scores, or mean of the per-query softmax over
// blocks with scale 1/sqrt(head_dim)).
void ScoreCentroids(const QueryGroup& q, const float* centroids, int32_t num_centroids, GroupPooling pooling,
                    float* scores);

// scores[p] for P pages with per-channel key bounds hi/lo [P][head_dim]: Quest's upper bound of q·k,
// sum over channels of max(q_d * hi_d, q_d * lo_d), pooled as above.
void ScorePageBounds(const QueryGroup& q, const float* hi, const float* lo, int32_t num_pages, GroupPooling pooling,
                     float* scores);

// Picks blocks in descending score order while they fit in `budget` tokens; a block that does not fit is
// skipped and smaller ones after it may still be taken, so the budget fills up. Ties break to the lower index.
// Returns the chosen block indices in ascending index order (storage order).
std::vector<int32_t> SelectGreedy(absl::Span<const float> scores, absl::Span<const int32_t> sizes, int64_t budget,
                                  int64_t* tokens_taken);

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_SELECTION_H_
