// Batched k-means against fp64 CPU references of its two steps, and end-to-end on separable data.
#include "cuda/ops/kmeans.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/runtime/device.h"
#include "cuda/testing/test_util.h"

namespace livekv {
namespace cuda {
namespace {

using testing::bf16;
using testing::DeviceArray;
using testing::ExpectClose;
using testing::RandomFloats;
using testing::RoundBf16;
using testing::ToBf16;

class KMeansTest : public testing::GpuTest {};

// Token-major keys [n][heads][dim] as the model produces them.
struct Data {
  int heads, n, dim;
  std::vector<float> host;  // bf16-exact values
  DeviceArray<bf16> dev;
  KMeansPoints View() const { return KMeansPoints{dev.get(), dim, static_cast<int64_t>(heads) * dim, heads, n, dim}; }
  const float* Point(int h, int i) const { return &host[(static_cast<size_t>(i) * heads + h) * dim]; }
};

Data MakeData(int heads, int n, int dim, std::mt19937* rng) {
  Data d{heads, n, dim, RoundBf16(RandomFloats(static_cast<size_t>(heads) * n * dim, rng, -1, 1)), {}};
  d.dev = DeviceArray<bf16>::FromHost(ToBf16(d.host));
  return d;
}

// The assignment kernels this device runs: mma.sync everywhere, wgmma on sm_90 (where kAuto picks it).
std::vector<KMeansAssignKernel> DeviceAssignKernels() {
  if (CurrentDeviceIsSm90().value_or(false)) return {KMeansAssignKernel::kMmaSync, KMeansAssignKernel::kWgmma};
  return {KMeansAssignKernel::kMmaSync};
}

TEST_F(KMeansTest, AssignPicksTheMostCosineSimilarCentroid) {
  for (const KMeansAssignKernel kernel : DeviceAssignKernels()) {
    SCOPED_TRACE(kernel == KMeansAssignKernel::kWgmma ? "wgmma" : "mma.sync");
    std::mt19937 rng(31);
    struct Case {
      int heads, n, dim, C;
    };
    for (const Case& c : {Case{1, 1, 64, 1}, Case{3, 7, 64, 7}, Case{8, 97, 128, 33}, Case{2, 1000, 128, 200},
                          Case{1, 333, 256, 97}, Case{3, 150, 128, 129},
                          // many CTAs and centroid tiles: the tile ring wraps around several times, partial last tile
                          Case{2, 4099, 128, 1031}, Case{1, 1201, 64, 331}, Case{1, 515, 256, 257},
                          // more than one 256-point CTA with a partial last one, a single partial centroid tile
                          Case{3, 777, 128, 65}, Case{1, 300, 256, 5}}) {
      Data d = MakeData(c.heads, c.n, c.dim, &rng);
      std::vector<float> cent = RandomFloats(static_cast<size_t>(c.heads) * c.C * c.dim, &rng, -1, 1);
      if (c.C > 2) std::fill(cent.begin() + c.dim, cent.begin() + 2 * c.dim, 0.0f);  // a zero centroid scores 0
      auto dcent = DeviceArray<float>::FromHost(cent);
      DeviceArray<int32_t> labels(static_cast<size_t>(c.heads) * c.n);
      DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(c.heads, c.n, c.C, c.dim));
      ASSERT_TRUE(KMeansAssign(d.View(), dcent.get(), c.C, labels.get(), ws.get(), ws.size(), stream(), kernel).ok());
      std::vector<int32_t> got = labels.ToHost();
      int exact = 0;
      for (int h = 0; h < c.heads; ++h) {
        std::vector<double> inv(c.C);
        for (int k = 0; k < c.C; ++k) {
          double ss = 0;
          for (int e = 0; e < c.dim; ++e)
            ss += double(cent[(size_t(h) * c.C + k) * c.dim + e]) * cent[(size_t(h) * c.C + k) * c.dim + e];
          inv[k] = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
        }
        for (int i = 0; i < c.n; ++i) {
          const float* p = d.Point(h, i);
          double pn = 0, best = -1e300;
          int arg = 0;
          std::vector<double> score(c.C);
          for (int k = 0; k < c.C; ++k) {
            double s = 0;
            for (int e = 0; e < c.dim; ++e) s += double(p[e]) * cent[(size_t(h) * c.C + k) * c.dim + e];
            score[k] = s * inv[k];
            if (score[k] > best) best = score[k], arg = k;
          }
          for (int e = 0; e < c.dim; ++e) pn += double(p[e]) * p[e];
          const int32_t l = got[size_t(h) * c.n + i];
          ASSERT_GE(l, 0);
          ASSERT_LT(l, c.C);
          // bf16 rounding of the normalised centroids moves each score by at most 2^-9 |p|.
          EXPECT_GE(score[l], best - 1.05 * std::sqrt(pn) / 256.0)
              << "head " << h << " point " << i << " label " << l << " best " << arg;
          exact += l == arg;
        }
      }
      EXPECT_GE(exact, 0.9 * c.heads * c.n) << "most labels should match the fp64 argmax exactly";
    }
  }
}

// Both kernels multiply the same bf16 operands in fp32: on data without exact ties they give the same labels.
TEST_F(KMeansTest, AssignKernelsAgree) {
  const std::vector<KMeansAssignKernel> kernels = DeviceAssignKernels();
  if (kernels.size() < 2) {
    DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(1, 8, 2, 64));
    Data d = [] {
      std::mt19937 r(1);
      return MakeData(1, 8, 64, &r);
    }();
    auto cent = DeviceArray<float>::FromHost(std::vector<float>(2 * 64, 1.0f));
    DeviceArray<int32_t> labels(8);
    EXPECT_EQ(
        KMeansAssign(d.View(), cent.get(), 2, labels.get(), ws.get(), ws.size(), stream(), KMeansAssignKernel::kWgmma)
            .code(),
        absl::StatusCode::kFailedPrecondition);
    GTEST_SKIP() << "no wgmma on this device";
  }
  std::mt19937 rng(35);
  for (const int dim : {64, 128, 256}) {
    const int heads = 2, n = 3001, C = 517;
    Data d = MakeData(heads, n, dim, &rng);
    auto cent = DeviceArray<float>::FromHost(RandomFloats(static_cast<size_t>(heads) * C * dim, &rng, -1, 1));
    DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(heads, n, C, dim));
    std::vector<std::vector<int32_t>> got;
    for (const KMeansAssignKernel kernel : kernels) {
      DeviceArray<int32_t> labels(static_cast<size_t>(heads) * n);
      labels.Poison();
      ASSERT_TRUE(KMeansAssign(d.View(), cent.get(), C, labels.get(), ws.get(), ws.size(), stream(), kernel).ok());
      got.push_back(labels.ToHost());
    }
    size_t same = 0;
    for (size_t i = 0; i < got[0].size(); ++i) same += got[0][i] == got[1][i];
    EXPECT_GE(same, got[0].size() - got[0].size() / 1000) << "dim " << dim;
  }
}

TEST_F(KMeansTest, UpdateIsTheMeanOfMembers) {
  std::mt19937 rng(32);
  struct Case {
    int heads, n, dim, C;
  };
  for (const Case& c : {Case{1, 1, 64, 1}, Case{3, 97, 64, 7}, Case{8, 1000, 128, 33}, Case{2, 50, 256, 50},
                        // clusters of hundreds of members; more clusters than one scan chunk (1024)
                        Case{2, 5003, 128, 7}, Case{1, 4099, 64, 2500}, Case{2, 3001, 256, 1031},
                        // clusters of thousands of members
                        Case{1, 20011, 64, 3}, Case{2, 9001, 256, 17}}) {
    Data d = MakeData(c.heads, c.n, c.dim, &rng);
    std::vector<int32_t> labels(size_t(c.heads) * c.n);
    for (auto& l : labels) l = static_cast<int32_t>(rng() % c.C);
    if (c.C > 3) {
      for (auto& l : labels)
        if (l == 3) l = 2;  // cluster 3 is empty: keeps its centroid
    }
    std::vector<float> old = RandomFloats(size_t(c.heads) * c.C * c.dim, &rng, 5, 6);
    auto dlabels = DeviceArray<int32_t>::FromHost(labels);
    auto dcent = DeviceArray<float>::FromHost(old);
    DeviceArray<int32_t> sizes(size_t(c.heads) * c.C);
    DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(c.heads, c.n, c.C, c.dim));
    ASSERT_TRUE(
        KMeansUpdate(d.View(), dlabels.get(), c.C, dcent.get(), sizes.get(), ws.get(), ws.size(), stream()).ok());
    std::vector<double> sum(size_t(c.heads) * c.C * c.dim, 0.0), sabs(sum.size(), 0.0);
    std::vector<int32_t> count(size_t(c.heads) * c.C, 0);
    for (int h = 0; h < c.heads; ++h) {
      for (int i = 0; i < c.n; ++i) {
        const int32_t l = labels[size_t(h) * c.n + i];
        ++count[size_t(h) * c.C + l];
        for (int e = 0; e < c.dim; ++e) {
          sum[(size_t(h) * c.C + l) * c.dim + e] += d.Point(h, i)[e];
          sabs[(size_t(h) * c.C + l) * c.dim + e] += std::fabs(d.Point(h, i)[e]);
        }
      }
    }
    std::vector<float> ref(sum.size()), tol(sum.size());
    for (size_t r = 0; r < count.size(); ++r) {
      for (int e = 0; e < c.dim; ++e) {
        const size_t i = r * c.dim + e;
        ref[i] = count[r] > 0 ? static_cast<float>(sum[i] / count[r]) : old[i];
        tol[i] = count[r] > 0 ? static_cast<float>(3e-5 * sabs[i] / count[r]) + 1e-7f : 0.0f;  // empty: exact
      }
    }
    ExpectClose(dcent.ToHost(), ref, tol, 0.0f, "centroids");
    EXPECT_EQ(sizes.ToHost(), count);
  }
}

// Each round of KMeansRun ends with the member means of its assignment. On points with quarter-integer coordinates
// every fp32 sum is exact whatever the order of the additions, so the clustering is deterministic: a run of k - 1
// rounds returns the labels of a k-round run's k-th assignment, and the k-round run's centroids must be those
// labels' member means (empty clusters keep the centroids of k - 1 rounds). Checked with each assignment kernel
// after 1 to 4 rounds (the labels keep changing between rounds on these points), on partial CTAs, odd cluster
// counts, and clusters of thousands of members.
TEST_F(KMeansTest, RunCentroidsAreTheMeansOfTheLastAssignment) {
  for (const KMeansAssignKernel kernel : DeviceAssignKernels()) {
    SCOPED_TRACE(kernel == KMeansAssignKernel::kWgmma ? "wgmma" : "mma.sync");
    std::mt19937 rng(39);
    int moved = 0;  // labels changed from one round's assignment to the next, over all cases
    struct Case {
      int heads, n, dim, C;
    };
    for (const Case& c : {Case{1, 1, 64, 1}, Case{2, 3001, 64, 7}, Case{3, 777, 128, 65}, Case{1, 515, 256, 257},
                          Case{2, 5003, 128, 3}, Case{1, 9001, 256, 2}}) {
      Data d{c.heads, c.n, c.dim, std::vector<float>(size_t(c.n) * c.heads * c.dim), {}};
      for (float& x : d.host) x = static_cast<float>(static_cast<int>(rng() % 9) - 4) * 0.25f;
      d.dev = DeviceArray<bf16>::FromHost(ToBf16(d.host));
      std::vector<float> init = RandomFloats(size_t(c.heads) * c.C * c.dim, &rng, -1, 1);
      DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(c.heads, c.n, c.C, c.dim));
      // Centroids, labels and sizes after `rounds` rounds from `init`.
      auto run = [&](int rounds, std::vector<float>* cent_out, std::vector<int32_t>* labels_out,
                     std::vector<int32_t>* sizes_out) {
        auto cent = DeviceArray<float>::FromHost(init);
        DeviceArray<int32_t> labels(size_t(c.heads) * c.n), sizes(size_t(c.heads) * c.C);
        labels.Poison();
        sizes.Poison();
        ASSERT_TRUE(KMeansRun(d.View(), c.C, rounds, cent.get(), labels.get(), sizes.get(), ws.get(), ws.size(),
                              stream(), 0.0, kernel)
                        .ok());
        *cent_out = cent.ToHost();
        *labels_out = labels.ToHost();
        *sizes_out = sizes.ToHost();
      };
      std::vector<float> before, after;
      std::vector<int32_t> previous, last, sizes, ignored_labels, ignored_sizes;
      for (int rounds = 1; rounds <= 4; ++rounds) {
        SCOPED_TRACE(rounds);
        run(rounds - 1, &before, &last, &sizes);  // the centroids before the last round and its assignment's labels
        std::vector<int32_t> count(size_t(c.heads) * c.C, 0);
        for (int h = 0; h < c.heads; ++h) {
          for (int i = 0; i < c.n; ++i) ++count[size_t(h) * c.C + last[size_t(h) * c.n + i]];
        }
        EXPECT_EQ(sizes, count) << "the sizes count the labels a run returns";
        for (size_t i = 0; i < previous.size(); ++i) moved += last[i] != previous[i];
        run(rounds, &after, &ignored_labels, &ignored_sizes);
        std::vector<double> sum(init.size(), 0.0);
        for (int h = 0; h < c.heads; ++h) {
          for (int i = 0; i < c.n; ++i) {
            const size_t r = size_t(h) * c.C + last[size_t(h) * c.n + i];
            for (int e = 0; e < c.dim; ++e) sum[r * c.dim + e] += d.Point(h, i)[e];
          }
        }
        std::vector<float> ref(init.size());
        for (size_t r = 0; r < count.size(); ++r) {
          for (int e = 0; e < c.dim; ++e) {
            const size_t i = r * c.dim + e;
            ref[i] = count[r] > 0 ? static_cast<float>(sum[i] / count[r]) : before[i];  // empty: unchanged
          }
        }
        ExpectClose(after, ref, 0.0f, 1e-6f, "centroids: the member means of the last assignment");
        previous = last;
      }
    }
    EXPECT_GT(moved, 0) << "the rounds should move points between clusters";
  }
}

TEST_F(KMeansTest, RunRecoversSeparatedClusters) {
  std::mt19937 rng(33);
  const int heads = 3, dim = 128, C = 37, per = 11, n = C * per;
  // Cluster k of head h: points near a random unit direction; directions are nearly orthogonal in 128-d.
  std::vector<float> host(size_t(n) * heads * dim);
  std::vector<int32_t> truth(size_t(heads) * n), init(size_t(heads) * C);
  std::normal_distribution<float> noise(0.0f, 0.02f);
  for (int h = 0; h < heads; ++h) {
    std::vector<std::vector<float>> centers(C, std::vector<float>(dim));
    for (auto& ctr : centers) {
      double ss = 0;
      for (float& x : ctr) x = noise(rng) * 50, ss += x * x;
      for (float& x : ctr) x /= std::sqrt(ss);
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int i = 0; i < n; ++i) {
      const int k = order[i] % C;
      truth[size_t(h) * n + i] = k;
      const float scale = 0.5f + (order[i] % 7) * 0.3f;  // cosine ignores the scale
      for (int e = 0; e < dim; ++e) host[(size_t(i) * heads + h) * dim + e] = scale * centers[k][e] + noise(rng);
    }
    for (int k = 0; k < C; ++k) {
      for (int i = 0; i < n; ++i) {
        if (truth[size_t(h) * n + i] == k) {
          init[size_t(h) * C + k] = i;
          break;
        }
      }
    }
  }
  Data d{heads, n, dim, RoundBf16(host), {}};
  d.dev = DeviceArray<bf16>::FromHost(ToBf16(d.host));
  auto dinit = DeviceArray<int32_t>::FromHost(init);
  DeviceArray<float> cent(size_t(heads) * C * dim);
  DeviceArray<int32_t> labels(size_t(heads) * n), sizes(size_t(heads) * C);
  DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(heads, n, C, dim));
  ASSERT_TRUE(KMeansInitFromPoints(d.View(), dinit.get(), C, cent.get(), stream()).ok());
  ASSERT_TRUE(KMeansRun(d.View(), C, 5, cent.get(), labels.get(), sizes.get(), ws.get(), ws.size(), stream()).ok());
  EXPECT_EQ(labels.ToHost(), truth);
  EXPECT_EQ(sizes.ToHost(), std::vector<int32_t>(size_t(heads) * C, per));
  std::vector<float> c = cent.ToHost();
  for (float x : c) ASSERT_TRUE(std::isfinite(x));

  // With an early stop: the same exact recovery (the labels stop changing after the second assignment).
  ASSERT_TRUE(KMeansInitFromPoints(d.View(), dinit.get(), C, cent.get(), stream()).ok());
  labels.Poison();
  sizes.Poison();
  ASSERT_TRUE(
      KMeansRun(d.View(), C, 50, cent.get(), labels.get(), sizes.get(), ws.get(), ws.size(), stream(), 1e-3).ok());
  EXPECT_EQ(labels.ToHost(), truth);
  EXPECT_EQ(sizes.ToHost(), std::vector<int32_t>(size_t(heads) * C, per));

  EXPECT_EQ(KMeansRun(d.View(), n + 1, 1, cent.get(), labels.get(), nullptr, ws.get(), ws.size(), stream()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KMeansRun(d.View(), C, 1, cent.get(), labels.get(), nullptr, ws.get(), ws.size(), stream(), 1.0).code(),
            absl::StatusCode::kInvalidArgument);
  // A workspace sized for fewer points (the update's sort needs one index per point) is refused, not overrun.
  EXPECT_EQ(KMeansRun(d.View(), C, 1, cent.get(), labels.get(), nullptr, ws.get(),
                      KMeansWorkspaceBytes(heads, n / 2, C, dim), stream())
                .code(),
            absl::StatusCode::kInvalidArgument);
  KMeansPoints bad = d.View();
  bad.dim = 96;
  EXPECT_EQ(KMeansAssign(bad, cent.get(), C, labels.get(), ws.get(), ws.size(), stream()).code(),
            absl::StatusCode::kInvalidArgument);
}

// Early stop on data without clusters (uniform points), where the labels keep changing for a while: whatever
// iteration it stops at, the returned labels are the assignment against the returned centroids and the sizes
// count them; with a loose threshold it stops, with none it runs every round (both end consistent).
TEST_F(KMeansTest, RunWithEarlyStopReturnsAConsistentClustering) {
  std::mt19937 rng(37);
  for (double stop : {0.0, 1e-3, 0.05}) {
    const int heads = 3, n = 997, dim = 128, C = 31;
    Data d = MakeData(heads, n, dim, &rng);
    std::vector<int32_t> init(size_t(heads) * C);
    for (int h = 0; h < heads; ++h) {
      for (int k = 0; k < C; ++k) init[size_t(h) * C + k] = (k * 31 + h) % n;
    }
    auto dinit = DeviceArray<int32_t>::FromHost(init);
    DeviceArray<float> cent(size_t(heads) * C * dim);
    DeviceArray<int32_t> labels(size_t(heads) * n), sizes(size_t(heads) * C), again(size_t(heads) * n);
    DeviceArray<uint8_t> ws(KMeansWorkspaceBytes(heads, n, C, dim));
    ASSERT_TRUE(KMeansInitFromPoints(d.View(), dinit.get(), C, cent.get(), stream()).ok());
    ASSERT_TRUE(
        KMeansRun(d.View(), C, 30, cent.get(), labels.get(), sizes.get(), ws.get(), ws.size(), stream(), stop).ok());
    ASSERT_TRUE(KMeansAssign(d.View(), cent.get(), C, again.get(), ws.get(), ws.size(), stream()).ok());
    const std::vector<int32_t> got = labels.ToHost();
    EXPECT_EQ(got, again.ToHost()) << "stop " << stop << ": labels are not the assignment against the centroids";
    std::vector<int32_t> count(size_t(heads) * C, 0);
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < n; ++i) {
        const int32_t k = got[size_t(h) * n + i];
        ASSERT_TRUE(k >= 0 && k < C) << k;
        ++count[size_t(h) * C + k];
      }
    }
    EXPECT_EQ(sizes.ToHost(), count) << "stop " << stop;
    for (float x : cent.ToHost()) ASSERT_TRUE(std::isfinite(x));
  }
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
