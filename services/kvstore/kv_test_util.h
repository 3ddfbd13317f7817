// File: services/kvstore/kv_test_util.h
//
// Test helpers for the KV store: deterministic token-major K/V rows, and exact comparisons of SequenceKvs.
#ifndef LIVEKV_SERVICES_KVSTORE_KV_TEST_UTIL_H_
#define LIVEKV_SERVICES_KVSTORE_KV_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvcache/policy.h"
#include "kvcache/sequence_kv.h"
#include "services/kvstore/session_store.h"

namespace livekv {
namespace testing_util {

// Rows of positions [first_position, first_position + n) of every layer: keys[layer] and values[layer] hold n
// token-major rows ([n][num_kv_heads][head_dim] of the geometry's dtype). Values are pseudo-random in [-1, 1),
// a function of (seed, layer, head, position, channel), so that any row can be rebuilt and k-means has structure
// to find.
struct Rows {
  int64_t n = 0;
  std::vector<std::string> keys;
  std::vector<std::string> values;
};
Rows MakeRows(const KvGeometry& g, int64_t first_position, int64_t n, uint64_t seed = 1);

// A session `id` of model "tiny" with `g` and the full policy over small windows (window and cluster window 4, one
// cluster per window, no dense layers), for tests of the store's bookkeeping.
NewSession SmallFullSession(const std::string& id, const KvGeometry& g);

// Appends `rows` to every layer of `kv` and commits.
absl::Status AppendRows(SequenceKv* kv, const Rows& rows);

// One append of MakeRows(g, from, n) to session `id` of `store`, in which the `cluster_pages` positional pages from
// position `first_positional` of every head are clustered into two clusters: even positions (centroid all 0.5)
// and odd positions (all -0.5). No clustering when cluster_pages is 0.
absl::Status AppendWithEvenOddClusters(SessionStore* store, const KvGeometry& g, const std::string& id, int64_t from,
                                       int64_t n, int32_t cluster_pages, int64_t first_positional);

// Plans clusterings of the oldest `num_pages` positional pages into `clusters` clusters for every head of `layers`
// (SequenceKv::PlanClustering, seeded), as a Maintenance to send and apply.
Maintenance PlanClusterings(const SequenceKv& kv, const std::vector<int32_t>& layers, int32_t num_pages,
                            int32_t clusters);

// Only the rows that hold tokens of a block's run of pages: K rows then V rows of each page, cut to `tokens` rows.
std::string ValidRows(absl::Span<const uint8_t> run, const PageLayout& layout, int64_t tokens);

// Tokens held by a block of (layer, head) of `kv`.
int64_t BlockTokens(const SequenceKv& kv, int32_t layer, int32_t kv_head, const BlockRef& block);

// gtest expectations that `a` and `b` hold the same sequence: tokens, every head's sink count, clusters (sizes,
// positions, centroids), pages (positions, counts, bounds) and every block's rows, byte for byte.
void ExpectSameSequence(const SequenceKv& a, const SequenceKv& b);

// Every block's valid rows of every head, concatenated in SelectAll order (a fingerprint of the whole content).
std::string AllRows(const SequenceKv& kv);

}  // namespace testing_util
}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_KV_TEST_UTIL_H_
