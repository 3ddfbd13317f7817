// File: kvcache/kmeans.h
//
// Lloyd's k-means over attention keys as ClusterKV clusters them: assignment by cosine similarity (points and
// centroids L2-normalised for the argmax only), update = plain mean of the raw (un-normalised) member keys. CPU,
// fp32 data, fp64 accumulation of the means. The assignment step is an OpenBLAS sgemm of blocks of points against
// the normalised centroids followed by a row argmax; it is ~all of the cost (2·n·k·dim FLOPs per pass). The points
// enter the sgemm un-normalised: argmax_c p·ĉ = argmax_c cos(p, c) as ||p|| > 0 is common to the row (a zero point
// scores 0 either way), so no normalised copy of the data is made or streamed.
//
//   KMeansOptions o;
//   o.num_clusters = 400;
//   LIVEKV_ASSIGN_OR_RETURN(KMeansResult r, KMeans(keys, num_tokens, head_dim, o));
//
// Algorithm (the contract the tests check):
//   1. Init: k centroids taken from the points (see KMeansInit).
//   2. Main phase, up to `iterations` rounds of: assign every point to its most cosine-similar centroid; if no
//      label changed since the previous round, stop (a fixed point; reported as converged with
//      iterations_run < iterations); else set every centroid to the mean of its members. A cluster left empty by
//      the assignment is re-seeded: empty clusters, in index order, each take the not-yet-taken non-zero point
//      that is least cosine-similar to its own centroid (ties → lower point index) among points whose cluster
//      still has more than one member; that point is moved (its old cluster's mean drops it), so after the update
//      every centroid is again exactly the mean of its members. An empty cluster with no such point available
//      keeps its previous centroid.
//   3. Final phase (ClusterKV's "final relabel", extended to a fixed point): assign again; if nothing changed,
//      converged; otherwise recompute the means of the new members (empty clusters keep their previous centroid,
//      no re-seeding, so a fixed point can be reached) and repeat, at most 1 + max_extra_iterations updates.
//   On return, always: `centroids[c]` is the mean of its members for every non-empty c (computed in fp64,
//   rounded to fp32) and finite for every c; sizes sum to n. When `converged` is true, additionally every label
//   is the argmax of the fp32 cosine scores against the returned centroids (a fixed point). When it is false
//   (the update budget ran out), labels are the argmax against the centroids of the previous round, which then
//   moved to the means of these labels; a few boundary points may prefer another centroid.
//
// Ties and precision: scores are fp32 dot products of the points with the centroids (normalised in fp64, rounded
// to fp32). Exact ties (e.g. dim == 1, duplicate centroids, zero vectors) go to the lowest centroid index. Two
// centroids whose true cosines differ by less than fp32 rounding (~dim·2^-24 relative) may resolve either way. A
// zero point scores 0 with every centroid, an exact tie, so it joins cluster 0; a zero centroid scores 0 with every
// point. No NaN is produced.
//
// Threads: with `pool` == nullptr everything runs on the calling thread (OpenBLAS uses whatever thread count it
// is configured with), and the update's sums are accumulated during the assignment pass while each block of points
// is still in cache. With a pool, point blocks are spread over the pool and each block calls cblas_sgemm itself,
// so OpenBLAS should be configured to 1 thread (openblas_set_num_threads(1)): with more, concurrent calls are
// correct but OpenBLAS (>= 0.3.4) serialises threaded level-3 calls and its threads compete with the pool. The
// same holds for callers that run several KMeans at once (e.g. one per KV head). Measured (bench/kmeans_bench,
// 2 idle cores): a pool of 2 with OpenBLAS on 1 thread reached 196 GFLOP/s against 184 for no pool with OpenBLAS
// on 2 threads, and degrades less when oversubscribed. Results are bitwise identical with and without a pool and
// for any pool size (block boundaries depend only on k and block_rows; each cluster's sum is accumulated in
// increasing point order in fp64), given a deterministic single-threaded sgemm per block.
//
// Thread-safety: KMeans is a pure function; concurrent calls are safe (sharing one pool serialises them).
#ifndef LIVEKV_KVCACHE_KMEANS_H_
#define LIVEKV_KVCACHE_KMEANS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"

namespace livekv {

enum class KMeansInit {
  // k points sampled uniformly without replacement, skipping points equal (==, element-wise) to one already
  // taken; when the data has fewer than k distinct points the remaining centroids repeat points (no error).
  kDistinctSamples,
  // Greedy k-means++ (scikit-learn's variant) on the L2-normalised points: each next centroid is the best of
  // 2 + floor(ln k) candidates, each sampled with probability proportional to its squared distance to the nearest
  // chosen centroid, ||p̂ - ĉ||² (= 2 - 2cos for non-zero vectors); "best" = lowest total of those distances
  // afterwards. Taken points are never re-drawn; when every remaining point coincides with a chosen one, the rest
  // are drawn uniformly among the untaken points. Recovers well-separated groups that plain sampling often splits,
  // but costs k sequential skinny sgemm passes over the points: at n = 32768, dim = 128, k = 400 on one core about
  // 0.8 s, more than the 20 Lloyd iterations themselves (0.6 s). Use it for quality, not on the prefill path.
  kPlusPlus,
};

struct KMeansOptions {
  int32_t num_clusters = 0;  // k, >= 1 and <= n. No upper cap (ClusterKV's kernel capped at 256; we must not).
  int32_t iterations = 20;   // main-phase rounds (ClusterKV: 20, fixed); 0 = only the final phase (see above).
  // Update rounds allowed after the main phase beyond the one ClusterKV-style final relabel + mean recompute.
  // 0 = ClusterKV's cost (iterations + 1 assignment passes); tests use a large cap to reach the fixed point.
  int32_t max_extra_iterations = 0;
  KMeansInit init = KMeansInit::kDistinctSamples;
  uint64_t seed = 0;
  // Rows of points per sgemm block; 0 = automatic (512, fewer when the [rows][k] fp32 score block would pass
  // 8 MiB, at least 64). A tuning knob; any value gives a valid clustering, but bitwise reproducibility holds only
  // for the same value.
  int32_t block_rows = 0;
  // Borrowed; nullptr = the calling thread only. See the header comment on OpenBLAS threads.
  ThreadPool* pool = nullptr;
};

struct KMeansResult {
  std::vector<float> centroids;      // [k][dim], fp32: the mean of the raw member points (see the contract above)
  std::vector<int32_t> labels;       // [n]: the cluster of each point under cosine similarity
  std::vector<int32_t> sizes;        // [k]: members per cluster; sums to n
  int32_t iterations_run = 0;        // main-phase updates done; < options.iterations only when it converged early
  int32_t extra_iterations_run = 0;  // updates done in the final phase (0 when the main phase converged)
  int32_t assignment_passes = 0;     // sgemm passes over all points (2·n·k·dim FLOPs each)
  bool converged = false;            // labels are verified to be the argmax against the returned centroids
  int32_t clusters_reseeded = 0;     // empty clusters given a point in the main phase, summed over rounds
};

// Clusters n points of `dim` floats (row-major, points[i * dim + d]) into options.num_clusters clusters.
// Errors (INVALID_ARGUMENT, naming the parameter and the value): points == nullptr; n <= 0 or n > INT32_MAX
// (labels and sizes are int32); dim <= 0; num_clusters <= 0 or num_clusters > n (no silent clamping: a caller
// asking for more clusters than points has a bug, and fewer clusters would break its index arithmetic);
// iterations < 0; max_extra_iterations < 0; block_rows < 0; an unknown init; a non-finite value in points.
absl::StatusOr<KMeansResult> KMeans(const float* points, int64_t n, int32_t dim, const KMeansOptions& options);

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_KMEANS_H_
