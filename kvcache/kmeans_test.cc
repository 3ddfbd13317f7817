#include "kvcache/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

// One OpenBLAS thread: the contract for use with a pool, and what makes every sgemm block deterministic.
const bool kOneBlasThread = [] {
  openblas_set_num_threads(1);
  return true;
}();

std::vector<float> Gaussian(int64_t n, int32_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n * dim);
  for (float& x : v) x = normal(rng);
  return v;
}

// Cosine in fp64 with the library's convention: 0 when either vector is zero.
double RefCos(const float* a, const float* b, int32_t dim) {
  double ab = 0, aa = 0, bb = 0;
  for (int32_t j = 0; j < dim; ++j) {
    ab += static_cast<double>(a[j]) * b[j];
    aa += static_cast<double>(a[j]) * a[j];
    bb += static_cast<double>(b[j]) * b[j];
  }
  if (aa == 0 || bb == 0) return 0;
  return ab / (std::sqrt(aa) * std::sqrt(bb));
}

// Checks the always-true invariants (shapes, sizes, finite centroids, each non-empty centroid the mean of its
// members) and, when `fixed_point`, that every label is a most cosine-similar centroid. fp32 scores may resolve a
// near-tie either way (header: "Ties and precision"), so "most similar" allows a gap of a few fp32 ulps per dim.
void CheckInvariants(const std::vector<float>& points, int64_t n, int32_t dim, int32_t k, const KMeansResult& r,
                     bool fixed_point) {
  ASSERT_EQ(r.centroids.size(), static_cast<size_t>(k) * dim);
  ASSERT_EQ(r.labels.size(), static_cast<size_t>(n));
  ASSERT_EQ(r.sizes.size(), static_cast<size_t>(k));
  for (float c : r.centroids) ASSERT_TRUE(std::isfinite(c)) << c;
  std::vector<int32_t> counts(k, 0);
  std::vector<double> sums(static_cast<size_t>(k) * dim, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t l = r.labels[i];
    ASSERT_GE(l, 0);
    ASSERT_LT(l, k);
    ++counts[l];
    for (int32_t j = 0; j < dim; ++j) sums[l * dim + j] += points[i * dim + j];
  }
  int64_t total = 0;
  for (int32_t c = 0; c < k; ++c) {
    EXPECT_EQ(r.sizes[c], counts[c]) << "cluster " << c;
    total += r.sizes[c];
    if (counts[c] == 0) continue;
    for (int32_t j = 0; j < dim; ++j) {
      const double mean = sums[c * dim + j] / counts[c];
      EXPECT_NEAR(r.centroids[c * dim + j], mean, 1e-5 * std::abs(mean) + 1e-30) << "cluster " << c << " dim " << j;
    }
  }
  EXPECT_EQ(total, n);
  if (!fixed_point) return;
  const double tol = 4.0 * (dim + 4) * std::numeric_limits<float>::epsilon();
  for (int64_t i = 0; i < n; ++i) {
    const float* p = points.data() + i * dim;
    double best = -2;
    for (int32_t c = 0; c < k; ++c) best = std::max(best, RefCos(p, r.centroids.data() + c * dim, dim));
    const double mine = RefCos(p, r.centroids.data() + r.labels[i] * dim, dim);
    EXPECT_GE(mine, best - tol) << "point " << i << " label " << r.labels[i];
  }
}

KMeansOptions Opts(int32_t k, uint64_t seed, KMeansInit init = KMeansInit::kDistinctSamples) {
  KMeansOptions o;
  o.num_clusters = k;
  o.seed = seed;
  o.init = init;
  o.max_extra_iterations = 1000;  // reach the fixed point on small inputs
  return o;
}

TEST(KMeansTest, MatchesReferenceOnSmallRandomInputs) {
  ThreadPool pool(3);
  int cases = 0, exact_mismatch = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    for (int64_t n : {1, 2, 7, 33, 100}) {
      for (int32_t dim : {1, 3, 8, 17}) {
        const std::vector<float> points = Gaussian(n, dim, seed * 1000 + n * 10 + dim);
        for (int32_t k : {1, 2, 5, static_cast<int32_t>(n)}) {
          if (k > n) continue;
          for (KMeansInit init : {KMeansInit::kDistinctSamples, KMeansInit::kPlusPlus}) {
            for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
              SCOPED_TRACE(testing::Message() << "seed " << seed << " n " << n << " dim " << dim << " k " << k
                                              << " init " << static_cast<int>(init) << " pool " << (p != nullptr));
              KMeansOptions o = Opts(k, seed, init);
              o.pool = p;
              o.block_rows = (seed == 2) ? 16 : 0;  // several blocks at n = 33, 100
              absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, o);
              ASSERT_TRUE(r.ok()) << r.status();
              EXPECT_TRUE(r->converged);
              EXPECT_EQ(r->assignment_passes, r->iterations_run + r->extra_iterations_run + 1);
              CheckInvariants(points, n, dim, k, *r, /*fixed_point=*/true);
              // Count labels that are not the exact fp64 argmax (near-ties): expected to be vanishingly rare.
              for (int64_t i = 0; i < n; ++i) {
                const float* pt = points.data() + i * dim;
                int32_t arg = 0;
                double best = -2;
                for (int32_t c = 0; c < k; ++c) {
                  const double s = RefCos(pt, r->centroids.data() + c * dim, dim);
                  if (s > best) best = s, arg = c;
                }
                exact_mismatch += arg != r->labels[i];
              }
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 200);
  // 0 with Debian's OpenBLAS 0.3.21; a different sgemm may flip a near-tie (documented), hence the slack.
  EXPECT_LE(exact_mismatch, 2) << "labels differing from the exact fp64 argmax";
}

// 8 well-separated directions with varying magnitudes plus small noise.
std::vector<float> Directions(int64_t per_group, int32_t dim, uint32_t seed, std::vector<int32_t>* group) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.03f);
  std::uniform_real_distribution<float> magnitude(0.5f, 3.0f);
  const int32_t groups = 8;
  std::vector<float> dirs = Gaussian(groups, dim, seed + 77);
  std::vector<float> points;
  std::vector<std::pair<int32_t, std::vector<float>>> rows;
  for (int32_t g = 0; g < groups; ++g) {
    for (int64_t i = 0; i < per_group; ++i) {
      std::vector<float> row(dim);
      const float m = magnitude(rng);
      double norm = 0;
      for (int32_t j = 0; j < dim; ++j) norm += dirs[g * dim + j] * dirs[g * dim + j];
      for (int32_t j = 0; j < dim; ++j) row[j] = m * (dirs[g * dim + j] / std::sqrt(norm) + noise(rng));
      rows.emplace_back(g, row);
    }
  }
  std::shuffle(rows.begin(), rows.end(), rng);
  group->clear();
  for (auto& [g, row] : rows) {
    group->push_back(g);
    points.insert(points.end(), row.begin(), row.end());
  }
  return points;
}

TEST(KMeansTest, RecoversWellSeparatedDirections) {
  const int32_t dim = 32;
  const int64_t per_group = 100, n = 8 * per_group;
  for (uint32_t seed = 0; seed < 10; ++seed) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    std::vector<int32_t> group;
    const std::vector<float> points = Directions(per_group, dim, seed, &group);
    KMeansOptions o = Opts(8, seed, KMeansInit::kPlusPlus);
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, o);
    ASSERT_TRUE(r.ok()) << r.status();
    CheckInvariants(points, n, dim, 8, *r, /*fixed_point=*/true);
    // Exact recovery: a bijection between groups and clusters.
    std::map<int32_t, std::set<int32_t>> clusters_of_group, groups_of_cluster;
    for (int64_t i = 0; i < n; ++i) {
      clusters_of_group[group[i]].insert(r->labels[i]);
      groups_of_cluster[r->labels[i]].insert(group[i]);
    }
    EXPECT_EQ(groups_of_cluster.size(), 8u);
    for (auto& [c, gs] : groups_of_cluster) EXPECT_EQ(gs.size(), 1u) << "cluster " << c;
    for (auto& [g, cs] : clusters_of_group) EXPECT_EQ(cs.size(), 1u) << "group " << g;
    // Converges well within ClusterKV's 20 rounds, and says so.
    EXPECT_TRUE(r->converged);
    EXPECT_LT(r->iterations_run, 20);
    EXPECT_EQ(r->extra_iterations_run, 0);
  }
}

TEST(KMeansTest, AllPointsIdentical) {
  const int64_t n = 50;
  const int32_t dim = 4;
  std::vector<float> points;
  for (int64_t i = 0; i < n; ++i) points.insert(points.end(), {0.5f, -1.0f, 2.0f, 0.25f});
  for (KMeansInit init : {KMeansInit::kDistinctSamples, KMeansInit::kPlusPlus}) {
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, Opts(5, 7, init));
    ASSERT_TRUE(r.ok()) << r.status();
    CheckInvariants(points, n, dim, 5, *r, /*fixed_point=*/true);
    EXPECT_TRUE(r->converged);
    EXPECT_THAT(r->sizes, testing::ElementsAre(50, 0, 0, 0, 0));
    for (int32_t c = 0; c < 5; ++c) {
      for (int32_t j = 0; j < dim; ++j) EXPECT_EQ(r->centroids[c * dim + j], points[j]);
    }
  }
}

TEST(KMeansTest, ZeroVectors) {
  const int32_t dim = 5;
  std::vector<float> points = Gaussian(40, dim, 11);
  for (int64_t i : {0, 3, 17, 39}) std::fill(points.begin() + i * dim, points.begin() + (i + 1) * dim, 0.0f);
  std::fill(points.begin() + 5 * dim, points.begin() + 6 * dim, -0.0f);
  for (KMeansInit init : {KMeansInit::kDistinctSamples, KMeansInit::kPlusPlus}) {
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), 40, dim, Opts(6, 3, init));
    ASSERT_TRUE(r.ok()) << r.status();
    CheckInvariants(points, 40, dim, 6, *r, /*fixed_point=*/true);
    // A zero point ties at cosine 0 with every centroid: lowest index.
    for (int64_t i : {0, 3, 5, 17, 39}) EXPECT_EQ(r->labels[i], 0) << "point " << i;
  }
  // All zero: every centroid is zero, everything in cluster 0.
  std::vector<float> zeros(10 * 3, 0.0f);
  absl::StatusOr<KMeansResult> r = KMeans(zeros.data(), 10, 3, Opts(3, 1));
  ASSERT_TRUE(r.ok()) << r.status();
  CheckInvariants(zeros, 10, 3, 3, *r, /*fixed_point=*/true);
  EXPECT_THAT(r->sizes, testing::ElementsAre(10, 0, 0));
  for (float c : r->centroids) EXPECT_EQ(c, 0.0f);
}

TEST(KMeansTest, KEqualsNGivesSingletons) {
  const int64_t n = 33;
  const int32_t dim = 8;
  const std::vector<float> points = Gaussian(n, dim, 5);
  for (KMeansInit init : {KMeansInit::kDistinctSamples, KMeansInit::kPlusPlus}) {
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, Opts(n, 9, init));
    ASSERT_TRUE(r.ok()) << r.status();
    CheckInvariants(points, n, dim, n, *r, /*fixed_point=*/true);
    for (int32_t c = 0; c < n; ++c) EXPECT_EQ(r->sizes[c], 1);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(0, std::memcmp(&r->centroids[r->labels[i] * dim], &points[i * dim], sizeof(float) * dim));
    }
  }
}

TEST(KMeansTest, DimOneTiesGoToLowestIndex) {
  // In one dimension every cosine is exactly -1, 0 or 1, so ties are everywhere; with k up to 100 they span the
  // argmax's vector lanes, its 8-wide tail and its scalar tail.
  std::vector<float> many(100);
  std::mt19937 rng(4);
  for (float& x : many) x = static_cast<float>(static_cast<int>(rng() % 17) - 5);
  for (const std::vector<float>& points : {std::vector<float>{3, -1, 0.5f, -2, 0, 7, -0.25f, 1, 1, -4, 2, 0}, many}) {
    const int64_t n = points.size();
    for (int32_t k : {1, 2, 3, 5, 12, 33, 47, 77, 100}) {
      if (k > n) continue;
      for (uint64_t seed = 0; seed < 5; ++seed) {
        SCOPED_TRACE(testing::Message() << "n " << n << " k " << k << " seed " << seed);
        absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, 1, Opts(k, seed));
        ASSERT_TRUE(r.ok()) << r.status();
        CheckInvariants(points, n, 1, k, *r, /*fixed_point=*/true);
        for (int64_t i = 0; i < n; ++i) {
          int32_t arg = 0;
          double best = -2;
          for (int32_t c = 0; c < k; ++c) {
            const double s = RefCos(&points[i], &r->centroids[c], 1);
            if (s > best) best = s, arg = c;
          }
          EXPECT_EQ(r->labels[i], arg) << "point " << i;
        }
      }
    }
  }
}

TEST(KMeansTest, MoreThan256Clusters) {
  // ClusterKV's kernels capped the cluster count at 256 per head; nothing here may.
  const int64_t n = 1500;
  const int32_t dim = 8, k = 600;
  const std::vector<float> points = Gaussian(n, dim, 99);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), ThreadPool::Default()}) {
    KMeansOptions o = Opts(k, 3);
    o.pool = pool;
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->converged);
    CheckInvariants(points, n, dim, k, *r, /*fixed_point=*/true);
    EXPECT_GT(std::count_if(r->sizes.begin(), r->sizes.end(), [](int32_t s) { return s > 0; }), 256);
  }
}

TEST(KMeansTest, SinglePoint) {
  const std::vector<float> point = {1.5f, -2.0f, 0.0f};
  absl::StatusOr<KMeansResult> r = KMeans(point.data(), 1, 3, Opts(1, 0));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->labels, std::vector<int32_t>{0});
  EXPECT_EQ(r->sizes, std::vector<int32_t>{1});
  EXPECT_EQ(r->centroids, point);
  EXPECT_TRUE(r->converged);
}

TEST(KMeansTest, EmptyClusterIsReseededWithTheLeastSimilarPoint) {
  // Two points share a direction: when init draws both, they tie, one cluster is empty, and re-seeding must
  // hand it (0, 1), the point least similar to its centroid. Every seed ends in the same partition.
  const std::vector<float> points = {1, 0, 2, 0, 0, 1};
  int reseeded_runs = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    KMeansOptions o = Opts(2, seed);
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), 3, 2, o);
    ASSERT_TRUE(r.ok()) << r.status();
    CheckInvariants(points, 3, 2, 2, *r, /*fixed_point=*/true);
    EXPECT_EQ(r->labels[0], r->labels[1]) << "seed " << seed;
    EXPECT_NE(r->labels[0], r->labels[2]) << "seed " << seed;
    EXPECT_THAT(r->sizes, testing::UnorderedElementsAre(1, 2));
    reseeded_runs += r->clusters_reseeded > 0;
  }
  EXPECT_GT(reseeded_runs, 0);  // init drew both x-axis points in some of the seeds
}

TEST(KMeansTest, BadArgumentsNameTheParameter) {
  const std::vector<float> points = Gaussian(10, 4, 1);
  auto code_and_message = [&](const float* p, int64_t n, int32_t dim, const KMeansOptions& o) {
    absl::StatusOr<KMeansResult> r = KMeans(p, n, dim, o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  const KMeansOptions ok = Opts(3, 0);
  EXPECT_THAT(code_and_message(nullptr, 10, 4, ok), HasSubstr("points is null"));
  EXPECT_THAT(code_and_message(points.data(), 0, 4, ok), HasSubstr("n must be in [1, 2^31 - 1], got 0"));
  EXPECT_THAT(code_and_message(points.data(), -3, 4, ok), HasSubstr("got -3"));
  EXPECT_THAT(code_and_message(points.data(), int64_t{1} << 31, 4, ok), HasSubstr("got 2147483648"));
  EXPECT_THAT(code_and_message(points.data(), 10, 0, ok), HasSubstr("dim must be positive, got 0"));
  KMeansOptions o = ok;
  o.num_clusters = 0;
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("num_clusters must be in [1, n = 10], got 0"));
  o.num_clusters = 11;
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("num_clusters must be in [1, n = 10], got 11"));
  o = ok;
  o.iterations = -1;
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("iterations must be >= 0, got -1"));
  o = ok;
  o.max_extra_iterations = -2;
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("max_extra_iterations must be >= 0, got -2"));
  o = ok;
  o.block_rows = -1;
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("block_rows must be >= 0, got -1"));
  o = ok;
  o.init = static_cast<KMeansInit>(9);
  EXPECT_THAT(code_and_message(points.data(), 10, 4, o), HasSubstr("unknown init 9"));
  std::vector<float> bad = points;
  bad[3 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(code_and_message(bad.data(), 10, 4, ok), HasSubstr("points[3][1] is not finite"));
  bad[3 * 4 + 1] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(code_and_message(bad.data(), 10, 4, ok), HasSubstr("points[3][1] is not finite (inf)"));
  // With a pool the rows are checked in parallel; the first bad one is still the one named.
  ThreadPool pool(3);
  std::vector<float> many = Gaussian(5000, 4, 2);
  many[4000 * 4 + 2] = -std::numeric_limits<float>::infinity();
  many[2500 * 4 + 3] = std::numeric_limits<float>::quiet_NaN();
  KMeansOptions pooled = ok;
  pooled.pool = &pool;
  EXPECT_THAT(code_and_message(many.data(), 5000, 4, pooled), HasSubstr("points[2500][3] is not finite (nan)"));
}

void ExpectBitwiseEqual(const KMeansResult& a, const KMeansResult& b) {
  ASSERT_EQ(a.centroids.size(), b.centroids.size());
  EXPECT_EQ(0, std::memcmp(a.centroids.data(), b.centroids.data(), sizeof(float) * a.centroids.size()));
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.sizes, b.sizes);
  EXPECT_EQ(a.iterations_run, b.iterations_run);
  EXPECT_EQ(a.extra_iterations_run, b.extra_iterations_run);
  EXPECT_EQ(a.converged, b.converged);
  EXPECT_EQ(a.clusters_reseeded, b.clusters_reseeded);
}

// Gaussian data, and data with only 60 directions (scaled copies), where k = 150 leaves clusters empty every round,
// so re-seeding moves points each round (on one thread that takes the separate summing pass, not the fused one).
TEST(KMeansTest, SameSeedIsBitwiseIdenticalWithAndWithoutPool) {
  const int64_t n = 3000;
  const int32_t dim = 64, k = 150;
  const std::vector<float> gaussian = Gaussian(n, dim, 123);
  std::vector<float> few_directions(n * dim);
  {
    const std::vector<float> base = Gaussian(60, dim, 321);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> scale(0.5f, 2.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float s = scale(rng);
      for (int32_t j = 0; j < dim; ++j) few_directions[i * dim + j] = s * base[(i % 60) * dim + j];
    }
  }
  ThreadPool pool2(2), pool3(3);
  for (auto [init, iterations, few] :
       std::vector<std::tuple<KMeansInit, int32_t, bool>>{{KMeansInit::kDistinctSamples, 20, false},
                                                          {KMeansInit::kDistinctSamples, 4, false},
                                                          {KMeansInit::kPlusPlus, 20, false},
                                                          {KMeansInit::kDistinctSamples, 20, true},
                                                          {KMeansInit::kPlusPlus, 20, true}}) {
    SCOPED_TRACE(testing::Message() << "init " << static_cast<int>(init) << " iterations " << iterations
                                    << " few directions " << few);
    const std::vector<float>& points = few ? few_directions : gaussian;
    KMeansOptions o = Opts(k, 42, init);
    o.iterations = iterations;
    o.max_extra_iterations = 0;
    absl::StatusOr<KMeansResult> a = KMeans(points.data(), n, dim, o);
    absl::StatusOr<KMeansResult> b = KMeans(points.data(), n, dim, o);
    o.pool = &pool2;
    absl::StatusOr<KMeansResult> c = KMeans(points.data(), n, dim, o);
    absl::StatusOr<KMeansResult> d = KMeans(points.data(), n, dim, o);
    o.pool = &pool3;
    absl::StatusOr<KMeansResult> e = KMeans(points.data(), n, dim, o);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok() && e.ok());
    ExpectBitwiseEqual(*a, *b);
    ExpectBitwiseEqual(*a, *c);
    ExpectBitwiseEqual(*a, *d);
    ExpectBitwiseEqual(*a, *e);
    CheckInvariants(points, n, dim, k, *a, /*fixed_point=*/a->converged);
    EXPECT_LE(a->iterations_run, iterations);
    EXPECT_LE(a->extra_iterations_run, 1);
    EXPECT_EQ(a->assignment_passes, a->iterations_run + a->extra_iterations_run + (a->converged ? 1 : 0));
    if (iterations == 4) {
      EXPECT_FALSE(a->converged);
    }
    if (few) {
      EXPECT_GE(a->clusters_reseeded, 90);  // round 1 alone: >= 90 centroids repeat one of 60 directions
    }
    o.seed = 43;
    o.pool = nullptr;
    absl::StatusOr<KMeansResult> other = KMeans(points.data(), n, dim, o);
    ASSERT_TRUE(other.ok());
    EXPECT_NE(other->labels, a->labels);
  }
}

TEST(KMeansTest, IterationAccounting) {
  const std::vector<float> points = Gaussian(500, 16, 8);
  KMeansOptions o = Opts(20, 1);
  o.iterations = 0;
  o.max_extra_iterations = 0;
  absl::StatusOr<KMeansResult> r = KMeans(points.data(), 500, 16, o);
  ASSERT_TRUE(r.ok());
  // Assign to the initial centroids, then the means of those members.
  EXPECT_EQ(r->iterations_run, 0);
  EXPECT_EQ(r->extra_iterations_run, 1);
  EXPECT_EQ(r->assignment_passes, 1);
  CheckInvariants(points, 500, 16, 20, *r, /*fixed_point=*/false);

  o.iterations = 3;
  r = KMeans(points.data(), 500, 16, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->iterations_run, 3);
  EXPECT_EQ(r->extra_iterations_run, 1);
  EXPECT_EQ(r->assignment_passes, 4);
  EXPECT_FALSE(r->converged);
  CheckInvariants(points, 500, 16, 20, *r, /*fixed_point=*/false);

  o.max_extra_iterations = 1000;
  r = KMeans(points.data(), 500, 16, o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->converged);
  EXPECT_EQ(r->assignment_passes, r->iterations_run + r->extra_iterations_run + 1);
  CheckInvariants(points, 500, 16, 20, *r, /*fixed_point=*/true);
}

TEST(KMeansTest, AnyBlockSizeGivesAValidClustering) {
  const int64_t n = 257;
  const int32_t dim = 17, k = 31;
  const std::vector<float> points = Gaussian(n, dim, 77);
  ThreadPool pool(2);
  for (int32_t rows : {1, 7, 16, 256, 300}) {
    SCOPED_TRACE(testing::Message() << "block_rows " << rows);
    KMeansOptions o = Opts(k, 5);
    o.block_rows = rows;
    o.pool = &pool;
    absl::StatusOr<KMeansResult> r = KMeans(points.data(), n, dim, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->converged);
    CheckInvariants(points, n, dim, k, *r, /*fixed_point=*/true);
  }
}

}  // namespace
}  // namespace livekv
