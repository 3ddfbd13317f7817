// RemoteBlockFetcher against a counting channel: blocks are recalled once and kept, or — with
// Options::resident_selection_only — forgotten when a layer's selection moves on and recalled again, byte-exact.
#include "services/decode/remote_block_fetcher.h"

#include <cstring>
#include <memory>
#include <vector>

#include "common/allocator.h"
#include "gtest/gtest.h"
#include "kvcache/page_pool.h"
#include "kvcache/sequence_kv.h"

namespace livekv {
namespace {

// Copies blocks out of `source`, counting them.
class CountingChannel : public KvChannel {
 public:
  CountingChannel(const SequenceKv* source, int* blocks) : source_(source), blocks_(blocks) {}
  std::string name() const override { return "counting"; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override {
    for (const BlockDestination& b : blocks) {
      absl::StatusOr<absl::Span<uint8_t>> src = source_->BlockBytes(b.layer, b.kv_head, b.block);
      if (!src.ok()) return src.status();
      std::memcpy(b.destination.data(), src->data(), src->size());
      ++*blocks_;
    }
    if (bytes_out != nullptr) *bytes_out = 0;
    return absl::OkStatus();
  }

 private:
  const SequenceKv* source_;
  int* blocks_;
};

class RemoteBlockFetcherTest : public ::testing::Test {
 protected:
  static constexpr int kClusters = 3;

  RemoteBlockFetcherTest() {
    g_.num_layers = 1;
    g_.num_kv_heads = 1;
    g_.layout = PageLayout{4, 8, DType::kF32};
    g_.sink_tokens = 0;
    source_pool_ = PagePool::Create(&host_, {g_.layout.page_bytes(), size_t{1} << 20}).value();
    mirror_pool_ = PagePool::Create(&host_, {g_.layout.page_bytes(), size_t{1} << 20}).value();
    source_ = Build(source_pool_.get(), /*with_bytes=*/true);
    mirror_ = Build(mirror_pool_.get(), /*with_bytes=*/false);
  }

  // Three clusters of four tokens (one page each); the source's bytes are a pattern per cluster.
  std::unique_ptr<SequenceKv> Build(PagePool* pool, bool with_bytes) {
    std::unique_ptr<SequenceKv> kv = SequenceKv::Create(g_, pool).value();
    for (int c = 0; c < kClusters; ++c) {
      std::vector<uint8_t> bytes(g_.layout.page_bytes());
      for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(31 * c + i);
      const std::vector<float> centroid(8, static_cast<float>(c));
      EXPECT_TRUE(kv->ImportCluster(0, 0, {4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3}, centroid,
                                    with_bytes ? bytes.data() : nullptr)
                      .ok());
    }
    EXPECT_TRUE(kv->FinishImport(4 * kClusters).ok());
    return kv;
  }

  static LayerSelection Clusters(std::vector<int32_t> clusters) {
    LayerSelection s;
    s.heads.push_back(HeadSelection{false, std::move(clusters), {}});
    return s;
  }

  void ExpectSameBytes(int32_t cluster) {
    const BlockRef ref{BlockRef::Kind::kCluster, cluster, 0};
    const absl::Span<uint8_t> want = source_->BlockBytes(0, 0, ref).value();
    const absl::Span<uint8_t> got = mirror_->BlockBytes(0, 0, ref).value();
    ASSERT_EQ(want.size(), got.size());
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size())) << "cluster " << cluster;
  }

  KvGeometry g_;
  HostAllocator host_;
  std::unique_ptr<PagePool> source_pool_, mirror_pool_;
  std::unique_ptr<SequenceKv> source_, mirror_;
};

TEST_F(RemoteBlockFetcherTest, RecalledBlocksStayForTheWholeCallByDefault) {
  int fetched = 0;
  RemoteBlockFetcher f(mirror_.get(), std::make_unique<CountingChannel>(source_.get(), &fetched));
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({0, 1})).ok());
  EXPECT_EQ(fetched, 2);
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({2})).ok());
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({0, 1, 2})).ok());
  EXPECT_EQ(fetched, 3);
  for (int c = 0; c < kClusters; ++c) ExpectSameBytes(c);
  EXPECT_EQ(f.stats().demanded_blocks, 6);
  EXPECT_EQ(f.stats().demand_misses, 3);
}

TEST_F(RemoteBlockFetcherTest, ResidentSelectionOnlyRecallsWhatTheSelectionLeftBehind) {
  int fetched = 0;
  RemoteBlockFetcher::Options o;
  o.resident_selection_only = true;
  RemoteBlockFetcher f(mirror_.get(), std::make_unique<CountingChannel>(source_.get(), &fetched), o);
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({0, 1})).ok());
  EXPECT_EQ(fetched, 2);
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({1, 2})).ok());  // 0 forgotten, 1 kept, 2 recalled
  EXPECT_EQ(fetched, 3);
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({0, 1})).ok());  // 0 recalled again
  EXPECT_EQ(fetched, 4);
  ExpectSameBytes(0);
  ExpectSameBytes(1);
  // A block prefetched for the next step is not forgotten by this step's selection.
  ASSERT_TRUE(f.Prefetch(*mirror_, 0, Clusters({2})).ok());
  ASSERT_TRUE(f.Drain().ok());
  EXPECT_EQ(fetched, 5);
  ASSERT_TRUE(f.EnsureResident(*mirror_, 0, Clusters({2})).ok());
  EXPECT_EQ(fetched, 5);
  ExpectSameBytes(2);
}

}  // namespace
}  // namespace livekv
