#include "kvcache/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace livekv {
namespace {

// Rows per assignment sgemm block: 512, fewer when k is so large that the [rows][k] fp32 score block would pass
// 8 MiB (never fewer than 64). Measured at n = 32768, dim = 128, one core (Zen 5, OpenBLAS 0.3.21 Haswell kernels):
// blocks small enough to keep the score block in L2 lose, because OpenBLAS re-packs the whole centroid matrix for
// every call: k = 400: 64 rows 98, 160 rows 105, 512 rows 106 GFLOP/s; k = 2000: 32 rows 92, 128 rows 115,
// 512 rows 122 GFLOP/s; 1024 rows gains nothing more. The argmax then streams the block from L2/L3, which is cheap.
constexpr int64_t kBlockRows = 512;
constexpr int64_t kMaxScoreBlockBytes = int64_t{8} << 20;

// Rows per sgemm block in the k-means++ init (a few candidate columns per block). Fixed, so the init does not
// depend on the pool.
constexpr int64_t kPlusPlusBlockRows = 1024;

// SplitMix64: a tiny generator whose output is fully specified, so a seed gives the same clustering on every
// platform and standard library (std::uniform_int_distribution is implementation-defined).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), bound >= 1 (multiply-shift; bias below bound / 2^64).
  uint64_t Below(uint64_t bound) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * bound) >> 64);
  }
  // Uniform in [0, 1).
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

void RunParallel(ThreadPool* pool, int64_t n, int64_t min_grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (pool == nullptr) {
    fn(0, n);
  } else {
    pool->ParallelFor(n, fn, min_grain);
  }
}

// sum += p, widened to fp64.
inline void AddRow(const float* p, double* sum, int32_t dim) {
#pragma omp simd
  for (int32_t j = 0; j < dim; ++j) sum[j] += p[j];
}

// d = s / ||s|| (norm in fp64); a zero row stays zero, so it scores 0 against everything.
void NormalizeRow(const float* s, int32_t dim, float* d) {
  double ss = 0;
  for (int32_t j = 0; j < dim; ++j) ss += static_cast<double>(s[j]) * s[j];
  if (ss > 0) {
    const double norm = std::sqrt(ss);
    for (int32_t j = 0; j < dim; ++j) d[j] = static_cast<float>(s[j] / norm);
  } else {
    std::fill(d, d + dim, 0.0f);
  }
}

// Index of the largest of v[0, n), the first one on ties; v holds no NaN. 32 lanes (four 8-wide GCC/Clang vector
// registers, for instruction-level parallelism) each keep the first index of their own running max (strict >, so
// a lane never moves to a later equal value); merging the lanes takes the lowest index among equal maxima, and the
// scalar tail comes after every lane index. Plain auto-vectorisation of this loop spilled the lanes to memory and
// was 4x slower.
inline int32_t ArgMax(const float* v, int32_t n) {
  typedef float V8f __attribute__((vector_size(32)));
  typedef int32_t V8i __attribute__((vector_size(32)));
  constexpr int32_t kVecs = 4, kLanes = 8 * kVecs;
  const V8i iota = {0, 1, 2, 3, 4, 5, 6, 7};
  float best = v[0];
  int32_t arg = 0;
  int32_t c = 0;
  if (n >= kLanes) {
    V8f lane_max[kVecs];
    V8i lane_arg[kVecs];
    V8i index[kVecs];
    for (int32_t u = 0; u < kVecs; ++u) {
      std::memcpy(&lane_max[u], v + 8 * u, sizeof(V8f));
      index[u] = 8 * u + iota;
      lane_arg[u] = index[u];
    }
    for (c = kLanes; c + kLanes <= n; c += kLanes) {
#pragma GCC unroll 4  // keeps the lanes in registers
      for (int32_t u = 0; u < kVecs; ++u) {
        V8f x;
        std::memcpy(&x, v + c + 8 * u, sizeof(V8f));
        index[u] += kLanes;
        const V8i greater = x > lane_max[u];
        lane_max[u] = greater ? x : lane_max[u];
        lane_arg[u] = greater ? index[u] : lane_arg[u];
      }
    }
    // Fold the four vectors into the first (ties → lower index), continue 8 at a time, then merge its lanes.
    for (int32_t u = 1; u < kVecs; ++u) {
      const V8i take = (lane_max[u] > lane_max[0]) | ((lane_max[u] == lane_max[0]) & (lane_arg[u] < lane_arg[0]));
      lane_max[0] = take ? lane_max[u] : lane_max[0];
      lane_arg[0] = take ? lane_arg[u] : lane_arg[0];
    }
    for (; c + 8 <= n; c += 8) {
      V8f x;
      std::memcpy(&x, v + c, sizeof(V8f));
      index[0] = c + iota;
      const V8i greater = x > lane_max[0];
      lane_max[0] = greater ? x : lane_max[0];
      lane_arg[0] = greater ? index[0] : lane_arg[0];
    }
    best = lane_max[0][0];
    arg = lane_arg[0][0];
    for (int32_t l = 1; l < 8; ++l) {
      const float m = lane_max[0][l];
      const int32_t a = lane_arg[0][l];
      if (m > best || (m == best && a < arg)) best = m, arg = a;
    }
  }
  for (; c < n; ++c) {
    if (v[c] > best) best = v[c], arg = c;
  }
  return arg;
}

// Element-wise equality of point rows (-0 == +0), for the distinct-sample init.
struct RowHash {
  const float* points;
  int32_t dim;
  size_t operator()(int64_t i) const {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int32_t j = 0; j < dim; ++j) {
      const float v = points[i * dim + j];
      uint32_t bits = 0;
      if (v != 0.0f) std::memcpy(&bits, &v, sizeof(bits));  // canonical zero
      h = (h ^ bits) * 0x100000001b3ULL;
    }
    return static_cast<size_t>(h ^ (h >> 29));
  }
};
struct RowEq {
  const float* points;
  int32_t dim;
  bool operator()(int64_t a, int64_t b) const {
    for (int32_t j = 0; j < dim; ++j) {
      if (points[a * dim + j] != points[b * dim + j]) return false;
    }
    return true;
  }
};

class Clusterer {
 public:
  Clusterer(const float* points, int64_t n, int32_t dim, const KMeansOptions& o)
      : points_(points), n_(n), dim_(dim), k_(o.num_clusters), options_(o), pool_(o.pool) {
    int64_t rows = o.block_rows;
    if (rows == 0) {
      rows = std::clamp<int64_t>(kMaxScoreBlockBytes / (int64_t{4} * k_), 64, kBlockRows) / 16 * 16;
    }
    block_rows_ = std::min<int64_t>(rows, n_);
    num_blocks_ = (n_ + block_rows_ - 1) / block_rows_;
  }

  absl::StatusOr<KMeansResult> Run() {
    // The argmax over c of p·ĉ is that of cos(p, c) = p·ĉ / ||p||, so the points enter the sgemm raw (no
    // normalised copy of the data); 1/||p|| is only needed to turn a score into a cosine. The same pass validates
    // the data: a NaN or infinity makes the fp64 sum of squares non-finite (finite floats cannot overflow it).
    inv_norm_.resize(n_);
    std::atomic<int64_t> first_bad_row{n_};
    RunParallel(pool_, n_, 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float* p = points_ + i * dim_;
        double ss = 0;
        for (int32_t j = 0; j < dim_; ++j) ss += static_cast<double>(p[j]) * p[j];
        if (!std::isfinite(ss)) {
          int64_t seen = first_bad_row.load();
          while (i < seen && !first_bad_row.compare_exchange_weak(seen, i)) {
          }
          return;  // rows after i in this range cannot be the first bad one
        }
        inv_norm_[i] = ss > 0 ? static_cast<float>(1.0 / std::sqrt(ss)) : 0.0f;
      }
    });
    if (const int64_t row = first_bad_row.load(); row < n_) {
      const float* p = points_ + row * dim_;
      const float* bad = std::find_if(p, p + dim_, [](float v) { return !std::isfinite(v); });
      const int64_t col = bad - p;
      return absl::InvalidArgumentError(
          absl::StrCat("kmeans: points[", row, "][", col, "] is not finite (", p[col], ")"));
    }

    std::vector<int64_t> seeds = options_.init == KMeansInit::kPlusPlus ? InitPlusPlus() : InitDistinct();
    CHECK_EQ(static_cast<int64_t>(seeds.size()), k_);
    centroids_.resize(int64_t{k_} * dim_);
    for (int32_t c = 0; c < k_; ++c) {
      std::memcpy(centroids_.data() + int64_t{c} * dim_, points_ + seeds[c] * dim_, sizeof(float) * dim_);
    }
    labels_.assign(n_, -1);
    best_.resize(n_);
    counts_.resize(k_);

    KMeansResult r;
    // `have_means`: centroids_ are the means of labels_ (true after any update), so an assignment that changes
    // no label is a fixed point.
    bool have_means = false;
    for (int32_t it = 0; it < options_.iterations; ++it) {
      const int64_t changed = Assign();
      ++r.assignment_passes;
      if (have_means && changed == 0) {
        r.converged = true;
        break;
      }
      Update(/*reseed_empty=*/true);
      have_means = true;
      ++r.iterations_run;
    }
    if (!r.converged) {
      for (int32_t extra = 0;; ++extra) {
        const int64_t changed = Assign();
        ++r.assignment_passes;
        if (have_means && changed == 0) {
          r.converged = true;
          break;
        }
        Update(/*reseed_empty=*/false);
        have_means = true;
        ++r.extra_iterations_run;
        if (extra == options_.max_extra_iterations) break;
      }
    }

    r.centroids = std::move(centroids_);
    r.labels = std::move(labels_);
    r.sizes.assign(counts_.begin(), counts_.end());
    r.clusters_reseeded = reseeded_;
    return r;
  }

 private:
  // Labels every point with its most cosine-similar centroid (ties → lowest index) and records that cosine in
  // best_. Returns how many labels changed.
  int64_t Assign() {
    normalized_centroids_.resize(centroids_.size());
    for (int64_t c = 0; c < k_; ++c) {
      NormalizeRow(centroids_.data() + c * dim_, dim_, normalized_centroids_.data() + c * dim_);
    }
    // On one thread the update's sums are accumulated here, while each block of points is still in cache from the
    // sgemm (in increasing point order, as Update's own pass would, so the result is the same bit for bit).
    sums_fresh_ = pool_ == nullptr;
    if (sums_fresh_) sums_.assign(int64_t{k_} * dim_, 0.0);
    std::atomic<int64_t> changed{0};
    RunParallel(pool_, num_blocks_, 1, [&](int64_t block_begin, int64_t block_end) {
      std::unique_ptr<float[]> scores(new float[block_rows_ * k_]);  // uninitialised: sgemm writes it (beta 0)
      int64_t my_changed = 0;
      for (int64_t blk = block_begin; blk < block_end; ++blk) {
        const int64_t r0 = blk * block_rows_;
        const int64_t rows = std::min(block_rows_, n_ - r0);
        // scores[rows][k] = points[r0 : r0+rows][dim] · normalized_centroids[k][dim]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), k_, dim_, 1.0f,
                    points_ + r0 * dim_, dim_, normalized_centroids_.data(), dim_, 0.0f, scores.get(), k_);
        for (int64_t r = 0; r < rows; ++r) {
          const int32_t arg = ArgMax(scores.get() + r * k_, k_);
          const float m = scores[r * k_ + arg];
          const int64_t i = r0 + r;
          my_changed += labels_[i] != arg;
          labels_[i] = arg;
          best_[i] = m * inv_norm_[i];
        }
        if (sums_fresh_) {
          for (int64_t i = r0; i < r0 + rows; ++i) AddRow(points_ + i * dim_, sums_.data() + labels_[i] * dim_, dim_);
        }
      }
      changed.fetch_add(my_changed, std::memory_order_relaxed);
    });
    return changed.load();
  }

  // Sets every non-empty centroid to the mean of its members' raw points. Sums are fp64 and each cluster's sum is
  // accumulated in increasing point order whatever the pool, so the result does not depend on it. With
  // `reseed_empty`, first moves points into empty clusters as the header describes; otherwise empty clusters keep
  // their centroid.
  void Update(bool reseed_empty) {
    std::fill(counts_.begin(), counts_.end(), 0);
    for (int64_t i = 0; i < n_; ++i) ++counts_[labels_[i]];
    if (reseed_empty && Reseed()) sums_fresh_ = false;  // labels moved
    const bool summed = sums_fresh_;
    sums_fresh_ = false;
    sums_.resize(int64_t{k_} * dim_);
    // Each task owns a range of clusters and streams over all points in order (a sequential read, which the
    // prefetcher likes; gathering each cluster's members instead took about twice as long at n = 32768, dim = 128).
    RunParallel(pool_, k_, 16, [&](int64_t c_begin, int64_t c_end) {
      if (!summed) {
        std::fill(sums_.begin() + c_begin * dim_, sums_.begin() + c_end * dim_, 0.0);
        for (int64_t i = 0; i < n_; ++i) {
          const int64_t c = labels_[i];
          if (c >= c_begin && c < c_end) AddRow(points_ + i * dim_, sums_.data() + c * dim_, dim_);
        }
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        if (counts_[c] == 0) continue;
        const double* sum = sums_.data() + c * dim_;
        float* out = centroids_.data() + c * dim_;
        const double count = static_cast<double>(counts_[c]);
        for (int32_t j = 0; j < dim_; ++j) out[j] = static_cast<float>(sum[j] / count);
      }
    });
  }

  // Empty clusters, in index order, each take the least-similar non-zero point (by best_, ties → lower index)
  // whose cluster still has more than one member. Updates labels_ and counts_; returns whether a label moved.
  bool Reseed() {
    std::vector<int32_t> empty;
    for (int32_t c = 0; c < k_; ++c) {
      if (counts_[c] == 0) empty.push_back(c);
    }
    if (empty.empty()) return false;
    std::vector<int64_t> candidates;
    candidates.reserve(n_);
    for (int64_t i = 0; i < n_; ++i) {
      if (inv_norm_[i] > 0) candidates.push_back(i);
    }
    auto less_similar = [&](int64_t a, int64_t b) { return best_[a] != best_[b] ? best_[a] < best_[b] : a < b; };
    // Only the head of the order is needed unless many candidates are skipped: sort it, and the rest on demand.
    size_t sorted = std::min(candidates.size(), 2 * empty.size() + 64);
    std::partial_sort(candidates.begin(), candidates.begin() + sorted, candidates.end(), less_similar);
    size_t next = 0;
    bool moved = false;
    for (int32_t e : empty) {
      for (;; ++next) {
        if (next == sorted && sorted < candidates.size()) {
          std::sort(candidates.begin() + sorted, candidates.end(), less_similar);
          sorted = candidates.size();
        }
        if (next == candidates.size() || counts_[labels_[candidates[next]]] > 1) break;
      }
      if (next == candidates.size()) break;  // the rest keep their centroids
      const int64_t i = candidates[next++];
      --counts_[labels_[i]];
      labels_[i] = e;
      counts_[e] = 1;
      ++reseeded_;
      moved = true;
    }
    return moved;
  }

  std::vector<int64_t> InitDistinct() {
    SplitMix64 rng(options_.seed);
    std::vector<int64_t> perm(n_);
    std::iota(perm.begin(), perm.end(), int64_t{0});
    std::vector<int64_t> chosen, repeats;
    chosen.reserve(k_);
    absl::flat_hash_set<int64_t, RowHash, RowEq> seen(std::min<int64_t>(n_, 2 * int64_t{k_}), RowHash{points_, dim_},
                                                      RowEq{points_, dim_});
    // Partial Fisher-Yates: a uniform random order, walked until k distinct points are found.
    for (int64_t i = 0; i < n_ && static_cast<int32_t>(chosen.size()) < k_; ++i) {
      std::swap(perm[i], perm[i + static_cast<int64_t>(rng.Below(n_ - i))]);
      (seen.insert(perm[i]).second ? chosen : repeats).push_back(perm[i]);
    }
    // Fewer than k distinct points: repeat points, in the order they were drawn (k <= n, so there are enough).
    for (size_t i = 0; static_cast<int32_t>(chosen.size()) < k_; ++i) chosen.push_back(repeats[i]);
    return chosen;
  }

  // Greedy k-means++ (as scikit-learn): each step samples `trials` candidates with probability proportional to
  // dist (the squared distance of each normalised point to its nearest chosen centroid) and keeps the one that
  // lowers the total the most. The plain one-candidate version often puts two seeds in one tight group and none
  // in another, which Lloyd's iterations cannot undo. One sgemm per step scores all candidates.
  std::vector<int64_t> InitPlusPlus() {
    SplitMix64 rng(options_.seed);
    const int32_t trials = 2 + static_cast<int32_t>(std::log(static_cast<double>(k_)));
    const int64_t num_blocks = (n_ + kPlusPlusBlockRows - 1) / kPlusPlusBlockRows;
    std::vector<int64_t> chosen;
    chosen.reserve(k_);
    std::vector<char> taken(n_, 0);
    std::vector<float> dist(n_, std::numeric_limits<float>::infinity());
    std::vector<double> cumulative(n_);
    std::vector<float> cand_rows(int64_t{trials} * dim_), cand_norm(trials);
    std::vector<float> d(n_ * trials);  // [n][candidates]: squared distance to each candidate
    std::vector<double> partial(num_blocks * trials);

    // Fills d[:, 0:m] for candidates `cands` and returns argmin_j sum_i min(dist[i], d[i][j]) (ties → lower j).
    auto score = [&](const std::vector<int64_t>& cands) -> int32_t {
      const int32_t m = static_cast<int32_t>(cands.size());
      for (int32_t j = 0; j < m; ++j) {
        NormalizeRow(points_ + cands[j] * dim_, dim_, cand_rows.data() + int64_t{j} * dim_);
        cand_norm[j] = inv_norm_[cands[j]] > 0 ? 1.0f : 0.0f;
      }
      RunParallel(pool_, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        for (int64_t blk = block_begin; blk < block_end; ++blk) {
          const int64_t r0 = blk * kPlusPlusBlockRows;
          const int64_t rows = std::min(kPlusPlusBlockRows, n_ - r0);
          float* out = d.data() + r0 * m;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), m, dim_, 1.0f,
                      points_ + r0 * dim_, dim_, cand_rows.data(), dim_, 0.0f, out, m);
          double* pot = partial.data() + blk * m;
          std::fill(pot, pot + m, 0.0);
          for (int64_t r = 0; r < rows; ++r) {
            const float inv = inv_norm_[r0 + r];
            const float np = inv > 0 ? 1.0f : 0.0f;
            for (int32_t j = 0; j < m; ++j) {
              // ||p̂ - ĉ||² = |p̂|² + |ĉ|² - 2 p·ĉ/||p||, clamped: rounding can make it slightly negative.
              const float dd = std::max(0.0f, np + cand_norm[j] - 2.0f * out[r * m + j] * inv);
              out[r * m + j] = dd;
              pot[j] += std::min(dist[r0 + r], dd);
            }
          }
        }
      });
      int32_t best = 0;
      double best_pot = std::numeric_limits<double>::infinity();
      for (int32_t j = 0; j < m; ++j) {
        double pot = 0;
        for (int64_t blk = 0; blk < num_blocks; ++blk) pot += partial[blk * m + j];
        if (pot < best_pot) best_pot = pot, best = j;
      }
      return best;
    };
    auto take = [&](const std::vector<int64_t>& cands, int32_t j) {
      const int32_t m = static_cast<int32_t>(cands.size());
      for (int64_t i = 0; i < n_; ++i) dist[i] = std::min(dist[i], d[i * m + j]);
      chosen.push_back(cands[j]);
      taken[cands[j]] = 1;
      dist[cands[j]] = 0.0f;
    };

    std::vector<int64_t> cands = {static_cast<int64_t>(rng.Below(n_))};
    take(cands, score(cands));
    while (static_cast<int32_t>(chosen.size()) < k_) {
      double total = 0;
      for (int64_t i = 0; i < n_; ++i) cumulative[i] = (total += dist[i]);
      cands.clear();
      if (total > 0) {
        for (int32_t t = 0; t < trials; ++t) {
          const double u = rng.Unit() * total;
          int64_t i = std::upper_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin();
          while (i == n_ || dist[i] == 0.0f) --i;  // rounding at the end: the last point with mass
          cands.push_back(i);
        }
      } else {
        // Every remaining point coincides in direction with a chosen one: pick uniformly among the untaken.
        int64_t skip = static_cast<int64_t>(rng.Below(n_ - chosen.size()));
        for (int64_t i = 0; i < n_ && cands.empty(); ++i) {
          if (!taken[i] && skip-- == 0) cands.push_back(i);
        }
        CHECK_EQ(cands.size(), 1u);
      }
      take(cands, score(cands));
    }
    return chosen;
  }

  const float* const points_;
  const int64_t n_;
  const int32_t dim_;
  const int32_t k_;
  const KMeansOptions options_;
  ThreadPool* const pool_;
  int64_t block_rows_ = 0;
  int64_t num_blocks_ = 0;

  std::vector<float> inv_norm_;              // [n]: 1 / ||point||, 0 for a zero point
  std::vector<float> centroids_;             // [k][dim]
  std::vector<float> normalized_centroids_;  // [k][dim]
  std::vector<int32_t> labels_;              // [n]
  std::vector<float> best_;                  // [n]: score of each point against its own centroid
  std::vector<int64_t> counts_;              // [k]
  std::vector<double> sums_;                 // [k][dim]
  int32_t reseeded_ = 0;
  bool sums_fresh_ = false;  // sums_ already hold the sums for labels_ (set by Assign)
};

}  // namespace

absl::StatusOr<KMeansResult> KMeans(const float* points, int64_t n, int32_t dim, const KMeansOptions& options) {
  if (points == nullptr) return absl::InvalidArgumentError("kmeans: points is null");
  if (n <= 0 || n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans: n must be in [1, 2^31 - 1], got ", n));
  }
  if (dim <= 0) return absl::InvalidArgumentError(absl::StrCat("kmeans: dim must be positive, got ", dim));
  if (options.num_clusters <= 0 || options.num_clusters > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("kmeans: num_clusters must be in [1, n = ", n, "], got ", options.num_clusters));
  }
  if (options.iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans: iterations must be >= 0, got ", options.iterations));
  }
  if (options.max_extra_iterations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kmeans: max_extra_iterations must be >= 0, got ", options.max_extra_iterations));
  }
  if (options.block_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans: block_rows must be >= 0, got ", options.block_rows));
  }
  if (options.init != KMeansInit::kDistinctSamples && options.init != KMeansInit::kPlusPlus) {
    return absl::InvalidArgumentError(absl::StrCat("kmeans: unknown init ", static_cast<int>(options.init)));
  }
  return Clusterer(points, n, dim, options).Run();
}

}  // namespace livekv
