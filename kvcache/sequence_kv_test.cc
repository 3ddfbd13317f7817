#include "kvcache/sequence_kv.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>

#include "common/allocator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/page_layout.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

// The K and V values of (layer, head, position), so any row can be checked wherever it lives.
float KeyValue(int layer, int head, int64_t pos, int c) { return layer * 1000.0f + head * 100.0f + pos + c / 64.0f; }
float ValueValue(int layer, int head, int64_t pos, int c) { return -KeyValue(layer, head, pos, c); }

class SequenceKvTest : public ::testing::Test {
 protected:
  void Make(int32_t page_tokens, int32_t sink, DType dtype, size_t pool_pages = 4096) {
    g_.num_layers = 2;
    g_.num_kv_heads = 3;
    g_.layout = PageLayout{page_tokens, 8, dtype};
    g_.sink_tokens = sink;
    seq_.reset();  // it borrows the old pool
    pool_ = PagePool::Create(&host_, {g_.layout.page_bytes(), pool_pages * g_.layout.page_bytes()}).value();
    seq_ = SequenceKv::Create(g_, pool_.get()).value();
  }

  // Appends positions [num_tokens, num_tokens + n) to every layer (fp32 input) and commits.
  absl::Status AppendTokens(int64_t n, bool commit = true) {
    const int64_t p0 = seq_->num_tokens();
    for (int l = 0; l < g_.num_layers; ++l) {
      std::vector<float> k(n * g_.num_kv_heads * 8), v(k.size());
      for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < g_.num_kv_heads; ++h)
          for (int c = 0; c < 8; ++c) {
            k[(t * g_.num_kv_heads + h) * 8 + c] = KeyValue(l, h, p0 + t, c);
            v[(t * g_.num_kv_heads + h) * 8 + c] = ValueValue(l, h, p0 + t, c);
          }
      absl::Status s = seq_->Append(l, k.data(), v.data(), n, DType::kF32);
      if (!s.ok()) return s;
    }
    return commit ? seq_->Commit(n) : absl::OkStatus();
  }

  // Every token of (layer, head) as seen through the runs of SelectAll: position -> (k row, v row) checked.
  void ExpectAllTokensExact(int layer, int head) {
    const HeadSelection all = seq_->SelectAll(layer, head);
    std::vector<KvRun> runs;
    seq_->AppendRuns(layer, head, all, &runs);
    const std::vector<int64_t> positions = seq_->SelectionPositions(layer, head, all);
    ASSERT_EQ(static_cast<int64_t>(positions.size()), seq_->num_tokens());
    std::vector<int64_t> sorted = positions;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < seq_->num_tokens(); ++i) ASSERT_EQ(sorted[i], i);
    size_t i = 0;
    for (const KvRun& r : runs) {
      for (int32_t row = 0; row < r.n; ++row, ++i) {
        float k[8], v[8];
        ConvertToF32(static_cast<const uint8_t*>(r.k) + row * g_.layout.row_bytes(), g_.layout.dtype, 8, k);
        ConvertToF32(static_cast<const uint8_t*>(r.v) + row * g_.layout.row_bytes(), g_.layout.dtype, 8, v);
        for (int c = 0; c < 8; ++c) {
          float want_k = KeyValue(layer, head, positions[i], c), want_v = ValueValue(layer, head, positions[i], c);
          if (g_.layout.dtype == DType::kBF16) {
            want_k = BF16ToF32(F32ToBF16(want_k));
            want_v = BF16ToF32(F32ToBF16(want_v));
          }
          ASSERT_EQ(k[c], want_k) << "position " << positions[i];
          ASSERT_EQ(v[c], want_v) << "position " << positions[i];
        }
        if (r.first_position >= 0) {
          ASSERT_EQ(r.first_position + row, positions[i]);
        }
      }
    }
  }

  HostAllocator host_;
  KvGeometry g_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<SequenceKv> seq_;
};

TEST(PageLayoutTest, ConversionsAreExactBothWays) {
  for (DType t : {DType::kF32, DType::kBF16}) {
    const PageLayout layout{7, 5, t};
    const int n = 23, heads = 3, head = 2, first_row = 4;
    std::vector<uint8_t> k(n * heads * layout.row_bytes()), v(k.size());
    std::mt19937 rng(1);
    for (auto& b : k) b = rng();
    for (auto& b : v) b = rng();
    std::vector<uint8_t> pages(layout.PagesFor(first_row + n) * layout.page_bytes(), 0xAB);
    TokenMajorToPages(layout, k.data(), v.data(), n, heads, head, pages.data(), first_row);
    std::vector<uint8_t> k2(k.size(), 0), v2(v.size(), 0);
    PagesToTokenMajor(layout, pages.data(), first_row, n, heads, head, k2.data(), v2.data());
    for (int tkn = 0; tkn < n; ++tkn) {
      const size_t off = (tkn * heads + head) * layout.row_bytes();
      EXPECT_EQ(std::memcmp(&k[off], &k2[off], layout.row_bytes()), 0);
      EXPECT_EQ(std::memcmp(&v[off], &v2[off], layout.row_bytes()), 0);
    }
    // K rows then V rows inside a page: row 0 of the first page sits at offset first_row * row_bytes.
    EXPECT_EQ(std::memcmp(&pages[first_row * layout.row_bytes()], &k[head * layout.row_bytes()], layout.row_bytes()),
              0);
    EXPECT_EQ(std::memcmp(&pages[(7 + first_row) * layout.row_bytes()], &v[head * layout.row_bytes()],
                          layout.row_bytes()),
              0);
  }
}

TEST_F(SequenceKvTest, AppendCommitKeepsEveryTokenExactly) {
  for (DType t : {DType::kF32, DType::kBF16}) {
    Make(/*page_tokens=*/5, /*sink=*/3, t);
    ASSERT_TRUE(AppendTokens(2).ok());   // inside the sink
    ASSERT_TRUE(AppendTokens(9).ok());   // finishes the sink, fills pages
    ASSERT_TRUE(AppendTokens(1).ok());
    ASSERT_TRUE(AppendTokens(13).ok());
    EXPECT_EQ(seq_->num_tokens(), 25);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 3; ++h) ExpectAllTokensExact(l, h);
    const HeadKv& head = seq_->head(1, 2);
    EXPECT_EQ(head.sink_count(), 3);
    EXPECT_EQ(head.positional_tokens(), 22);
    EXPECT_EQ(head.num_pages(), 5);           // 22 tokens in pages of 5
    EXPECT_EQ(head.num_complete_pages(), 4);  // bounds for the complete ones
    // Bounds of the first positional page (positions 3..7): keys grow with position, so channel 0's min is
    // position 3's and its max position 7's (as stored, i.e. rounded to the layout's dtype).
    auto stored = [&](float x) { return t == DType::kBF16 ? BF16ToF32(F32ToBF16(x)) : x; };
    EXPECT_EQ(head.page_lo()[0], stored(KeyValue(1, 2, 3, 0)));
    EXPECT_EQ(head.page_hi()[0], stored(KeyValue(1, 2, 7, 0)));
  }
}

TEST_F(SequenceKvTest, RollbackRestoresTheLastCommitExactly) {
  Make(4, 2, DType::kF32);
  ASSERT_TRUE(AppendTokens(7).ok());
  const size_t bytes = seq_->pool_bytes();
  const auto used = pool_->stats().used_bytes;
  ASSERT_TRUE(AppendTokens(10, /*commit=*/false).ok());
  EXPECT_GT(pool_->stats().used_bytes, used);
  seq_->Rollback();
  EXPECT_EQ(seq_->num_tokens(), 7);
  EXPECT_EQ(seq_->pool_bytes(), bytes);
  EXPECT_EQ(pool_->stats().used_bytes, used);
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(0, h);
  // And appending again lands at the same positions.
  ASSERT_TRUE(AppendTokens(6).ok());
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(1, h);
}

TEST_F(SequenceKvTest, CommitOfUnequalLayersFails) {
  Make(4, 2, DType::kF32);
  std::vector<float> k(3 * 3 * 8), v(k.size());
  ASSERT_TRUE(seq_->Append(0, k.data(), v.data(), 3, DType::kF32).ok());
  absl::Status s = seq_->Commit(3);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("layer 1 appended 0"));
}

TEST_F(SequenceKvTest, ClusteringMovesEveryRowExactlyIntoContiguousRuns) {
  Make(4, 2, DType::kBF16);
  ASSERT_TRUE(AppendTokens(61).ok());
  const HeadKv& before = seq_->head(1, 0);
  const int32_t pages = before.num_pages();
  ASSERT_TRUE(seq_->ClusterPages(1, pages - 2, 5, KMeansOptions{}, nullptr).ok());
  const HeadKv& head = seq_->head(1, 0);
  EXPECT_EQ(head.num_pages(), 2);
  EXPECT_GE(head.num_clusters(), 1);
  EXPECT_LE(head.num_clusters(), 5);
  int64_t in_clusters = 0;
  for (int32_t c = 0; c < head.num_clusters(); ++c) {
    in_clusters += head.cluster(c).num_tokens;
    EXPECT_EQ(head.cluster_sizes()[c], head.cluster(c).num_tokens);
    EXPECT_TRUE(std::is_sorted(head.cluster(c).positions.begin(), head.cluster(c).positions.end()));
  }
  EXPECT_EQ(in_clusters, head.clustered_tokens());
  EXPECT_EQ(head.sink_count() + head.clustered_tokens() + head.positional_tokens(), 61);
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(1, h);
  ExpectAllTokensExact(0, 0);  // the other layer is untouched
  // Decoding continues after clustering.
  ASSERT_TRUE(AppendTokens(9).ok());
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(1, h);
}

TEST_F(SequenceKvTest, DropPagesFreesTheOldestAndKeepsTheRest) {
  Make(4, 2, DType::kF32);
  ASSERT_TRUE(AppendTokens(30).ok());
  const size_t bytes = seq_->pool_bytes();
  ASSERT_TRUE(seq_->DropPages(3).ok());
  EXPECT_EQ(seq_->pool_bytes(), bytes - 3 * 6 * g_.layout.page_bytes());
  const HeadKv& head = seq_->head(0, 1);
  EXPECT_EQ(head.page(0).first_position, 2 + 3 * 4);
  const std::vector<int64_t> pos = seq_->SelectionPositions(0, 1, seq_->SelectAll(0, 1));
  EXPECT_EQ(pos.size(), 2u + 30 - 2 - 12);
}

TEST_F(SequenceKvTest, DestroyingTheSequenceReturnsEveryPage) {
  Make(4, 2, DType::kF32);
  ASSERT_TRUE(AppendTokens(50).ok());
  ASSERT_TRUE(seq_->ClusterPages(0, 5, 3, KMeansOptions{}, nullptr).ok());
  EXPECT_GT(pool_->stats().used_bytes, 0u);
  EXPECT_EQ(pool_->stats().used_bytes, seq_->pool_bytes());
  seq_.reset();
  EXPECT_EQ(pool_->stats().used_bytes, 0u);
  EXPECT_EQ(pool_->stats().entries, 0u);
}

TEST_F(SequenceKvTest, PoolExhaustionIsResourceExhaustedAndLeavesTheLayerUnchanged) {
  // Sink pages take 6 of 14 pages; 8 remain: 4 tokens per page -> 10 tokens per head need 3 pages each = 9.
  Make(4, 2, DType::kF32, /*pool_pages=*/14);
  ASSERT_TRUE(AppendTokens(6).ok());  // 4 positional tokens: 1 page per head (6 pages) -> 2 free
  const size_t used = pool_->stats().used_bytes;
  std::vector<float> k(8 * 3 * 8), v(k.size());
  absl::Status s = seq_->Append(0, k.data(), v.data(), 8, DType::kF32);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool_->stats().used_bytes, used);
  seq_->Rollback();
  EXPECT_EQ(seq_->num_tokens(), 6);
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(0, h);
}

TEST_F(SequenceKvTest, ApplyClusteringRejectsPlansThatDoNotCoverThePagesExactly) {
  Make(4, 2, DType::kF32);
  ASSERT_TRUE(AppendTokens(30).ok());
  auto plan = seq_->PlanClustering(0, 4, 3, KMeansOptions{}, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const size_t used = pool_->stats().used_bytes;
  std::vector<HeadClustering> missing = *plan;
  missing[1].clusters[0].positions.pop_back();
  absl::Status s = seq_->ApplyClustering(missing);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("head 1"));
  std::vector<HeadClustering> twice = *plan;
  twice[0].clusters[0].positions.push_back(twice[0].clusters[0].positions[0]);
  EXPECT_THAT(std::string(seq_->ApplyClustering(twice).message()), HasSubstr("not an unassigned token"));
  std::vector<HeadClustering> foreign = *plan;
  foreign[2].clusters[0].positions[0] = 29;  // a token of a page that is not being clustered
  EXPECT_EQ(seq_->ApplyClustering(foreign).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool_->stats().used_bytes, used);
  for (int h = 0; h < 3; ++h) EXPECT_EQ(seq_->head(0, h).num_clusters(), 0);
  ASSERT_TRUE(seq_->ApplyClustering(*plan).ok());
  for (int h = 0; h < 3; ++h) ExpectAllTokensExact(0, h);
}

TEST_F(SequenceKvTest, MirrorsRebuiltFromBlocksAreByteIdentical) {
  Make(4, 2, DType::kBF16);
  ASSERT_TRUE(AppendTokens(45).ok());
  ASSERT_TRUE(seq_->ClusterPages(1, 6, 4, KMeansOptions{}, nullptr).ok());
  for (bool lazy : {false, true}) {
    auto mirror = SequenceKv::Create(g_, pool_.get()).value();
    for (int l = 0; l < 2; ++l) {
      for (int h = 0; h < 3; ++h) {
        const HeadKv& src = seq_->head(l, h);
        auto bytes = [&](const BlockRef& b) { return lazy ? nullptr : seq_->BlockBytes(l, h, b).value().data(); };
        ASSERT_TRUE(mirror->ImportSink(l, h, src.sink_count(), bytes({BlockRef::Kind::kSink, 0, 0})).ok());
        for (int c = 0; c < src.num_clusters(); ++c) {
          ASSERT_TRUE(mirror
                          ->ImportCluster(l, h, src.cluster(c).positions,
                                          absl::MakeConstSpan(src.centroids() + c * 8, 8),
                                          bytes({BlockRef::Kind::kCluster, c, 0}))
                          .ok());
        }
        for (int p = 0; p < src.num_pages(); ++p) {
          const bool complete = p < src.num_complete_pages();
          ASSERT_TRUE(mirror
                          ->ImportPage(l, h, src.page(p).first_position, src.page(p).count,
                                       complete ? src.page_hi() + p * 8 : nullptr,
                                       complete ? src.page_lo() + p * 8 : nullptr,
                                       bytes({BlockRef::Kind::kPage, p, src.page(p).first_position}))
                          .ok());
        }
        if (lazy) {  // fill every block afterwards, as a mirror that recalls lazily does
          const HeadSelection all = mirror->SelectAll(l, h);
          for (const BlockRef& b : mirror->SelectedBlocks(l, h, all)) {
            absl::Span<uint8_t> dst = mirror->BlockBytes(l, h, b).value();
            absl::Span<uint8_t> from = seq_->BlockBytes(l, h, b).value();
            ASSERT_EQ(dst.size(), from.size());
            std::memcpy(dst.data(), from.data(), dst.size());
          }
        }
      }
    }
    ASSERT_TRUE(mirror->FinishImport(45).ok());
    std::swap(mirror, seq_);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 3; ++h) {
        ExpectAllTokensExact(l, h);
        EXPECT_EQ(seq_->head(l, h).num_complete_pages(), mirror->head(l, h).num_complete_pages());
      }
    ASSERT_TRUE(AppendTokens(7).ok());  // the mirror keeps growing like the original
    for (int h = 0; h < 3; ++h) ExpectAllTokensExact(1, h);
    std::swap(mirror, seq_);
    seq_->Rollback();
  }
  auto bad = SequenceKv::Create(g_, pool_.get()).value();
  absl::Status s = bad->FinishImport(10);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("a sink of 0 tokens, not 2; the sequence has 10 tokens"));
  EXPECT_EQ(seq_->BlockBytes(0, 0, {BlockRef::Kind::kCluster, 9, 0}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(seq_->BlockBytes(0, 0, {BlockRef::Kind::kPage, 0, 3}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SequenceKvTest, SequencesThatDroppedPagesCanBeMirrored) {
  Make(4, 2, DType::kF32);
  ASSERT_TRUE(AppendTokens(30).ok());
  ASSERT_TRUE(seq_->DropPages(3).ok());
  auto mirror = SequenceKv::Create(g_, pool_.get()).value();
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 3; ++h) {
      const HeadKv& src = seq_->head(l, h);
      ASSERT_TRUE(mirror->ImportSink(l, h, src.sink_count(), seq_->BlockBytes(l, h, {}).value().data()).ok());
      for (int p = 0; p < src.num_pages(); ++p) {
        ASSERT_TRUE(mirror
                        ->ImportPage(l, h, src.page(p).first_position, src.page(p).count, nullptr, nullptr,
                                     seq_->BlockBytes(l, h, {BlockRef::Kind::kPage, p, src.page(p).first_position})
                                         .value()
                                         .data())
                        .ok());
      }
    }
  }
  ASSERT_TRUE(mirror->FinishImport(30).ok());
  EXPECT_EQ(mirror->num_tokens(), 30);
  EXPECT_EQ(mirror->SelectionPositions(1, 2, mirror->SelectAll(1, 2)), seq_->SelectionPositions(1, 2, seq_->SelectAll(1, 2)));
  // A page that does not end at the sequence's last token is not a dropped prefix but a mistake.
  auto bad = SequenceKv::Create(g_, pool_.get()).value();
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h) ASSERT_TRUE(bad->ImportSink(l, h, 2, nullptr).ok());
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h) ASSERT_TRUE(bad->ImportPage(l, h, 14, 3, nullptr, nullptr, nullptr).ok());
  absl::Status s = bad->FinishImport(30);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("positional pages ending at 17"));
}

TEST_F(SequenceKvTest, BadArgumentsAreRejected) {
  Make(4, 2, DType::kF32);
  std::vector<float> k(24), v(24);
  EXPECT_EQ(seq_->Append(2, k.data(), v.data(), 1, DType::kF32).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq_->ClusterPages(0, 1, 2, KMeansOptions{}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  KvGeometry bad = g_;
  bad.num_kv_heads = 0;
  EXPECT_EQ(SequenceKv::Create(bad, pool_.get()).status().code(), absl::StatusCode::kInvalidArgument);
  bad = g_;
  bad.layout.page_tokens = 8;  // pool pages are sized for 4
  EXPECT_THAT(std::string(SequenceKv::Create(bad, pool_.get()).status().message()), HasSubstr("page pool"));
}

}  // namespace
}  // namespace livekv
