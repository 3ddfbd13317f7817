// Block scoring and greedy selection against kvcache/selection.h (the CPU functions the policies use).
#include "cuda/ops/selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cblas.h>

#include "cuda/testing/test_util.h"
#include "kvcache/selection.h"

// kvcache/selection.cc, the CPU reference, calls OpenBLAS's cblas_sgemm for its score matrix. This test ships to a
// GPU machine without OpenBLAS (the shared library alone is 36 MB, more than half the bundle budget), so it brings
// the one routine the reference needs: a plain fp64-accumulating sgemm for the row-major, B-transposed,
// alpha = 1, beta = 0 case selection.cc uses. Being defined here, the symbol never resolves to libopenblas (which
// --as-needed then drops).
extern "C" void cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta, const enum CBLAS_TRANSPOSE tb,
                            const blasint m, const blasint n, const blasint k, const float alpha, const float* a,
                            const blasint lda, const float* b, const blasint ldb, const float beta, float* c,
                            const blasint ldc) {
  if (order != CblasRowMajor || ta != CblasNoTrans || tb != CblasTrans || alpha != 1.0f || beta != 0.0f) std::abort();
  for (blasint i = 0; i < m; ++i) {
    for (blasint j = 0; j < n; ++j) {
      double s = 0;
      for (blasint t = 0; t < k; ++t) s += double(a[i * lda + t]) * b[j * ldb + t];
      c[i * ldc + j] = static_cast<float>(s);
    }
  }
}

namespace livekv {
namespace cuda {
namespace {

using testing::bf16;
using testing::DeviceArray;
using testing::ExpectClose;
using testing::RandomFloats;
using testing::RoundBf16;
using testing::ToBf16;

class SelectionTest : public testing::GpuTest {
 protected:
  // Runs SelectBlocks and checks it against SelectGreedy on the same scores, head by head.
  void CheckSelect(const std::vector<float>& scores, const std::vector<int32_t>& sizes, int heads, int blocks,
                   int64_t budget, const std::string& what) {
    auto ds = DeviceArray<float>::FromHost(scores);
    auto dz = DeviceArray<int32_t>::FromHost(sizes);
    DeviceArray<int32_t> chosen(std::max<size_t>(1, size_t(heads) * blocks)), count(heads);
    DeviceArray<int64_t> taken(heads);
    DeviceArray<uint8_t> ws(std::max<size_t>(16, SelectWorkspaceBytes(heads, blocks)));
    SelectArgs a{ds.get(), dz.get(), heads, blocks, budget, chosen.get(), count.get(), taken.get()};
    ASSERT_TRUE(SelectBlocks(a, ws.get(), ws.size(), stream()).ok()) << what;
    std::vector<int32_t> got = chosen.ToHost(), got_count = count.ToHost();
    std::vector<int64_t> got_taken = taken.ToHost();
    for (int h = 0; h < heads; ++h) {
      int64_t want_taken = -1;
      std::vector<int32_t> want =
          SelectGreedy(absl::MakeConstSpan(scores.data() + size_t(h) * blocks, blocks),
                       absl::MakeConstSpan(sizes.data() + size_t(h) * blocks, blocks), budget, &want_taken);
      ASSERT_EQ(got_count[h], static_cast<int32_t>(want.size())) << what << " head " << h;
      EXPECT_EQ(got_taken[h], want_taken) << what << " head " << h;
      std::vector<int32_t> row(got.begin() + size_t(h) * blocks, got.begin() + size_t(h) * blocks + want.size());
      EXPECT_EQ(row, want) << what << " head " << h;
      for (int i = static_cast<int>(want.size()); i < blocks; ++i) ASSERT_EQ(got[size_t(h) * blocks + i], -1);
    }
  }
};

TEST_F(SelectionTest, ScoresMatchCpuAndSelectionMatchesSelectGreedy) {
  std::mt19937 rng(41);
  struct Case {
    int heads, group, rows, d, blocks;
    int64_t budget;
  };
  for (const Case& c : {Case{1, 1, 1, 64, 1, 32}, Case{3, 4, 1, 128, 7, 100}, Case{8, 4, 1, 128, 97, 1024},
                        Case{2, 7, 3, 64, 1000, 2048}, Case{1, 1, 2, 96, 33, 0}, Case{2, 2, 1, 128, 9000, 5000}}) {
    for (bool quest : {false, true}) {
      for (ScorePooling pooling : {ScorePooling::kMeanScore, ScorePooling::kMeanSoftmax}) {
        const std::string what = "heads " + std::to_string(c.heads) + " blocks " + std::to_string(c.blocks) +
                                 (quest ? " quest" : " centroids") +
                                 (pooling == ScorePooling::kMeanSoftmax ? " softmax" : " mean");
        const int hq = c.heads * c.group;
        std::vector<float> q = RoundBf16(RandomFloats(size_t(c.rows) * hq * c.d, &rng, -2, 2));
        std::vector<float> a = RandomFloats(size_t(c.heads) * c.blocks * c.d, &rng, -1, 1);
        std::vector<float> b = RandomFloats(a.size(), &rng, -1, 1);
        for (size_t i = 0; i < a.size(); ++i) {
          if (quest && a[i] < b[i]) std::swap(a[i], b[i]);  // hi >= lo
        }
        auto dq = DeviceArray<bf16>::FromHost(ToBf16(q));
        auto da = DeviceArray<float>::FromHost(a);
        auto db = DeviceArray<float>::FromHost(b);
        DeviceArray<float> pooled(size_t(c.heads) * c.blocks);
        DeviceArray<uint8_t> ws(ScoreWorkspaceBytes(c.heads, c.rows * c.group, c.blocks));
        ScoreArgs s;
        s.q = dq.get();
        s.rows = c.rows;
        s.heads = c.heads;
        s.group = c.group;
        s.head_dim = c.d;
        s.centroids = da.get();
        s.lo = quest ? db.get() : nullptr;
        s.blocks = c.blocks;
        s.pooling = pooling;
        s.pooled = pooled.get();
        ASSERT_TRUE(ScoreBlocks(s, ws.get(), ws.size(), stream()).ok()) << what;
        std::vector<float> ref(size_t(c.heads) * c.blocks);
        for (int h = 0; h < c.heads; ++h) {
          QueryGroup g;
          g.q = q.data() + size_t(h) * c.group * c.d;
          g.rows = c.rows;
          g.row_stride = int64_t(hq) * c.d;
          g.group = c.group;
          g.head_dim = c.d;
          const GroupPooling gp = pooling == ScorePooling::kMeanSoftmax ? GroupPooling::kMeanSoftmax : GroupPooling::kMeanScore;
          if (quest) {
            ScorePageBounds(g, a.data() + size_t(h) * c.blocks * c.d, b.data() + size_t(h) * c.blocks * c.d, c.blocks,
                            gp, ref.data() + size_t(h) * c.blocks);
          } else {
            ScoreCentroids(g, a.data() + size_t(h) * c.blocks * c.d, c.blocks, gp, ref.data() + size_t(h) * c.blocks);
          }
        }
        std::vector<float> got = pooled.ToHost();
        // fp32 dot products in another order: raw scores of magnitude ~sqrt(d) differ by ~1e-5 at most.
        ExpectClose(got, ref, pooling == ScorePooling::kMeanSoftmax ? 1e-6f : 2e-4f, 1e-4f, what);
        std::vector<int32_t> sizes(size_t(c.heads) * c.blocks);
        for (auto& z : sizes) z = static_cast<int32_t>(rng() % 64) + (rng() % 9 == 0 ? -int(rng() % 64) : 0);
        for (auto& z : sizes) z = std::max(z, 0);
        CheckSelect(got, sizes, c.heads, c.blocks, c.budget, what);
      }
    }
  }
}

TEST_F(SelectionTest, SelectHandlesTiesZeroSizesAndBudgets) {
  std::mt19937 rng(42);
  for (int blocks : {1, 2, 7, 33, 97, 1024, 1025, 8192, 8193, 20000}) {
    for (int64_t budget : {int64_t{0}, int64_t{1}, int64_t{31}, int64_t{1000}, int64_t{1} << 40}) {
      const int heads = 3;
      std::vector<float> scores(size_t(heads) * blocks);
      std::vector<int32_t> sizes(scores.size());
      for (size_t i = 0; i < scores.size(); ++i) {
        scores[i] = static_cast<float>(rng() % 5) - 2.0f;  // many exact ties, some -0 vs +0 below
        if (scores[i] == 0.0f && rng() % 2) scores[i] = -0.0f;
        sizes[i] = static_cast<int32_t>(rng() % 40);        // includes zero-size blocks
      }
      CheckSelect(scores, sizes, heads, blocks, budget,
                  "blocks " + std::to_string(blocks) + " budget " + std::to_string(budget));
    }
  }
  DeviceArray<int32_t> count(2);
  DeviceArray<int64_t> taken(2);
  SelectArgs empty{nullptr, nullptr, 2, 0, 10, nullptr, count.get(), taken.get()};
  ASSERT_TRUE(SelectBlocks(empty, nullptr, 0, stream()).ok());
  EXPECT_EQ(count.ToHost(), std::vector<int32_t>(2, 0));
  SelectArgs big{nullptr, nullptr, 2, 20000, 10, nullptr, count.get(), taken.get()};
  EXPECT_EQ(SelectBlocks(big, nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SelectionTest, FusedSelectMatchesScoreAndSelect) {
  std::mt19937 rng(43);
  struct Case {
    int heads, group, d, blocks;
    int64_t budget;
  };
  for (const Case& c : {Case{1, 1, 64, 1, 32}, Case{3, 4, 128, 7, 100}, Case{8, 4, 128, 1019, 2048},
                        Case{2, 7, 64, 1000, 2048}, Case{2, 8, 256, 4097, 5000}, Case{8, 4, 128, 4091, 1900},
                        Case{3, 2, 128, 33, 0}, Case{2, 4, 128, 0, 10}, Case{1, 3, 256, 2500, int64_t{1} << 40},
                        Case{2, 4, 96, 300, 700}}) {
    for (ScorePooling pooling : {ScorePooling::kMeanScore, ScorePooling::kMeanSoftmax}) {
      const std::string what = "heads " + std::to_string(c.heads) + " group " + std::to_string(c.group) + " d " +
                               std::to_string(c.d) + " blocks " + std::to_string(c.blocks) +
                               (pooling == ScorePooling::kMeanSoftmax ? " softmax" : " mean");
      ASSERT_TRUE(FusedSelectSupported(c.group, c.d, c.blocks)) << what;
      const int hq = c.heads * c.group;
      std::vector<float> q = RoundBf16(RandomFloats(size_t(hq) * c.d, &rng, -2, 2));
      std::vector<float> cent = RandomFloats(size_t(c.heads) * c.blocks * c.d, &rng, -1, 1);
      std::vector<int32_t> sizes(size_t(c.heads) * c.blocks);
      for (auto& z : sizes) z = rng() % 7 == 0 ? 0 : static_cast<int32_t>(1 + rng() % 63);
      auto dq = DeviceArray<bf16>::FromHost(ToBf16(q));
      auto dc = DeviceArray<float>::FromHost(cent.empty() ? std::vector<float>(1) : cent);
      auto dz = DeviceArray<int32_t>::FromHost(sizes.empty() ? std::vector<int32_t>(1) : sizes);
      const size_t n = std::max<size_t>(1, size_t(c.heads) * c.blocks);
      DeviceArray<float> pooled(n);
      DeviceArray<int32_t> chosen(n), count(c.heads);
      DeviceArray<int64_t> taken(c.heads);
      chosen.Upload(std::vector<int32_t>(n, 0x7f7f7f7f));  // not -1: every element must be written
      FusedSelectArgs f;
      f.q = dq.get();
      f.heads = c.heads;
      f.group = c.group;
      f.head_dim = c.d;
      f.centroids = dc.get();
      f.sizes = dz.get();
      f.blocks = c.blocks;
      f.pooling = pooling;
      f.budget = c.budget;
      f.pooled = pooled.get();
      f.chosen = chosen.get();
      f.count = count.get();
      f.taken = taken.get();
      DeviceArray<uint8_t> ws(FusedSelectWorkspaceBytes(c.heads, c.group, c.blocks));
      ASSERT_TRUE(FusedSelect(f, ws.get(), ws.size(), stream()).ok()) << what;
      Sync();
      // Pooled scores: the CPU's ScoreCentroids.
      std::vector<float> got = pooled.ToHost(), ref(size_t(c.heads) * c.blocks);
      got.resize(ref.size());
      for (int h = 0; h < c.heads && c.blocks > 0; ++h) {
        QueryGroup g;
        g.q = q.data() + size_t(h) * c.group * c.d;
        g.rows = 1;
        g.row_stride = int64_t(hq) * c.d;
        g.group = c.group;
        g.head_dim = c.d;
        ScoreCentroids(g, cent.data() + size_t(h) * c.blocks * c.d, c.blocks,
                       pooling == ScorePooling::kMeanSoftmax ? GroupPooling::kMeanSoftmax : GroupPooling::kMeanScore,
                       ref.data() + size_t(h) * c.blocks);
      }
      ExpectClose(got, ref, pooling == ScorePooling::kMeanSoftmax ? 1e-6f : 2e-4f, 1e-4f, what);
      // The pick: SelectGreedy on the kernel's own pooled scores.
      std::vector<int32_t> got_chosen = chosen.ToHost(), got_count = count.ToHost();
      std::vector<int64_t> got_taken = taken.ToHost();
      for (int h = 0; h < c.heads; ++h) {
        int64_t want_taken = -1;
        std::vector<int32_t> want =
            SelectGreedy(absl::MakeConstSpan(got.data() + size_t(h) * c.blocks, c.blocks),
                         absl::MakeConstSpan(sizes.data() + size_t(h) * c.blocks, c.blocks), c.budget, &want_taken);
        ASSERT_EQ(got_count[h], static_cast<int32_t>(want.size())) << what << " head " << h;
        EXPECT_EQ(got_taken[h], want_taken) << what << " head " << h;
        for (int i = 0; i < c.blocks; ++i) {
          ASSERT_EQ(got_chosen[size_t(h) * c.blocks + i], i < int(want.size()) ? want[i] : -1)
              << what << " head " << h << " position " << i;
        }
      }
    }
  }
  // Outputs in mapped pinned host memory (the recall path's speculative selection writes there).
  {
    const int heads = 8, group = 4, d = 128, blocks = 1019;
    std::vector<float> q = RoundBf16(RandomFloats(size_t(heads) * group * d, &rng, -2, 2));
    std::vector<float> cent = RandomFloats(size_t(heads) * blocks * d, &rng, -1, 1);
    std::vector<int32_t> sizes(size_t(heads) * blocks, 32);
    auto dq = DeviceArray<bf16>::FromHost(ToBf16(q));
    auto dc = DeviceArray<float>::FromHost(cent);
    auto dz = DeviceArray<int32_t>::FromHost(sizes);
    DeviceArray<int32_t> chosen(size_t(heads) * blocks), count(heads);
    DeviceArray<int64_t> taken(heads);
    auto host = PinnedHostBuffer::Create(size_t(heads) * blocks * 4 + heads * 4 + heads * 8, /*mapped=*/true);
    ASSERT_TRUE(host.ok());
    std::memset(host->data(), 0x7f, host->bytes());
    FusedSelectArgs f;
    f.q = dq.get();
    f.heads = heads;
    f.group = group;
    f.head_dim = d;
    f.centroids = dc.get();
    f.sizes = dz.get();
    f.blocks = blocks;
    f.budget = 2048 - 160;
    f.chosen = chosen.get();
    f.count = count.get();
    f.taken = taken.get();
    DeviceArray<uint8_t> ws(FusedSelectWorkspaceBytes(heads, group, blocks));
    ASSERT_TRUE(FusedSelect(f, ws.get(), ws.size(), stream()).ok());
    int64_t* h_taken = host->as<int64_t>();
    int32_t* h_count = reinterpret_cast<int32_t*>(h_taken + heads);
    int32_t* h_chosen = h_count + heads;
    f.chosen = h_chosen;
    f.count = h_count;
    f.taken = h_taken;
    ASSERT_TRUE(FusedSelect(f, ws.get(), ws.size(), stream()).ok());
    Sync();
    EXPECT_EQ(std::vector<int32_t>(h_chosen, h_chosen + heads * blocks), chosen.ToHost());
    EXPECT_EQ(std::vector<int32_t>(h_count, h_count + heads), count.ToHost());
    EXPECT_EQ(std::vector<int64_t>(h_taken, h_taken + heads), taken.ToHost());
    EXPECT_EQ(h_count[0], (2048 - 160) / 32);
  }
  // Sizes it does not take.
  EXPECT_FALSE(FusedSelectSupported(9, 128, 100));
  EXPECT_FALSE(FusedSelectSupported(4, 512, 100));
  EXPECT_FALSE(FusedSelectSupported(8, 128, 1 << 16));
  FusedSelectArgs bad;
  bad.heads = 2;
  bad.group = 4;
  bad.head_dim = 128;
  bad.blocks = 10;
  EXPECT_EQ(FusedSelect(bad, nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);  // no workspace
  bad.group = 9;
  EXPECT_EQ(FusedSelect(bad, nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
