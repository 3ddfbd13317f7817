#include "kvcache/selection.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace livekv {
namespace {

// raw[i][c] is query i's score for block c. Pools into out[c].
void Pool(std::vector<float>& raw, int32_t queries, int32_t blocks, GroupPooling pooling, float softmax_scale,
          float* out) {
  std::fill(out, out + blocks, 0.0f);
  if (blocks == 0 || queries == 0) return;
  const float inv_q = 1.0f / static_cast<float>(queries);
  for (int32_t i = 0; i < queries; ++i) {
    float* r = &raw[static_cast<size_t>(i) * blocks];
    if (pooling == GroupPooling::kMeanScore) {
      for (int32_t c = 0; c < blocks; ++c) out[c] += r[c] * inv_q;
    } else {
      const float mx = *std::max_element(r, r + blocks);
      float sum = 0;
      for (int32_t c = 0; c < blocks; ++c) sum += (r[c] = std::exp((r[c] - mx) * softmax_scale));
      const float inv = inv_q / sum;
      for (int32_t c = 0; c < blocks; ++c) out[c] += r[c] * inv;
    }
  }
}

}  // namespace

void ScoreCentroids(const QueryGroup& q, const float* centroids, int32_t num_centroids, GroupPooling pooling,
                    float* scores) {
  const int32_t n = q.count(), d = q.head_dim;
  if (num_centroids == 0) return;
  // Gather the group's queries into a dense [n][d] matrix, then one matrix product against the centroids.
  std::vector<float> queries(static_cast<size_t>(n) * d), raw(static_cast<size_t>(n) * num_centroids);
  for (int32_t i = 0; i < n; ++i) std::copy(q.vec(i), q.vec(i) + d, &queries[static_cast<size_t>(i) * d]);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, num_centroids, d, 1.0f, queries.data(), d, centroids, d,
              0.0f, raw.data(), num_centroids);
  Pool(raw, n, num_centroids, pooling, 1.0f / std::sqrt(static_cast<float>(d)), scores);
}

void ScorePageBounds(const QueryGroup& q, const float* hi, const float* lo, int32_t num_pages, GroupPooling pooling,
                     float* scores) {
  const int32_t n = q.count(), d = q.head_dim;
  std::vector<float> raw(static_cast<size_t>(n) * num_pages);
  for (int32_t i = 0; i < n; ++i) {
    const float* qi = q.vec(i);
    for (int32_t p = 0; p < num_pages; ++p) {
      const float* h = hi + static_cast<size_t>(p) * d;
      const float* l = lo + static_cast<size_t>(p) * d;
      float s = 0.0f;
      for (int32_t c = 0; c < d; ++c) s += std::max(qi[c] * h[c], qi[c] * l[c]);
      raw[static_cast<size_t>(i) * num_pages + p] = s;
    }
  }
  Pool(raw, n, num_pages, pooling, 1.0f / std::sqrt(static_cast<float>(d)), scores);
}

std::vector<int32_t> SelectGreedy(absl::Span<const float> scores, absl::Span<const int32_t> sizes, int64_t budget,
                                  int64_t* tokens_taken) {
  // Visit blocks best first through a heap: O(C + k log C) for the k blocks visited, instead of sorting all C.
  std::vector<int32_t> heap(scores.size());
  std::iota(heap.begin(), heap.end(), 0);
  auto worse = [&](int32_t a, int32_t b) { return scores[a] < scores[b] || (scores[a] == scores[b] && a > b); };
  std::make_heap(heap.begin(), heap.end(), worse);
  int32_t smallest = std::numeric_limits<int32_t>::max();
  for (int32_t s : sizes) smallest = std::min(smallest, s);
  std::vector<int32_t> chosen;
  int64_t left = budget;
  auto end = heap.end();
  while (end != heap.begin() && left > 0 && left >= smallest) {
    std::pop_heap(heap.begin(), end, worse);
    const int32_t c = *--end;
    if (sizes[c] <= left) {
      chosen.push_back(c);
      left -= sizes[c];
    }
  }
  std::sort(chosen.begin(), chosen.end());
  if (tokens_taken != nullptr) *tokens_taken = budget - left;
  return chosen;
}

}  // namespace livekv
