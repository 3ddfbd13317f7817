// The KV store's tiers and prefetch (session_store.h, "Tiers and prefetch"): idle sessions' cluster runs go to the
// cold tier and come back byte-exact on demand, ahead of demand from the session's recent selections, and before
// a commit; leased sessions stay hot.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/shm/shm_arena.h"
#include "gtest/gtest.h"
#include "services/kvstore/cold_tier.h"
#include "services/kvstore/kv_test_util.h"
#include "services/kvstore/session_store.h"

namespace livekv {
namespace {

using testing_util::MakeRows;
using testing_util::Rows;

constexpr int kHeadDim = 128;  // 4-token pages of 4 KiB: a demoted run frees whole OS pages

class TiersTest : public ::testing::Test {
 protected:
  TiersTest() {
    g_.num_layers = 2;
    g_.num_kv_heads = 2;
    g_.layout = PageLayout{4, kHeadDim, DType::kF32};
    g_.sink_tokens = 4;
    arena_ = ShmArena::Create({"livekvtiers", ShmArena::Prefault::kNone}).value();
    tier_ = ColdTier::Create(std::getenv("TEST_TMPDIR")).value();
    SessionStore::Options o;
    o.pool_bytes = size_t{4} << 20;
    o.cold_tier = tier_.get();
    o.cold_after = absl::Seconds(10);
    store_ = std::make_unique<SessionStore>(o, &clock_, arena_.get());
  }

  std::string Create(const std::string& id) {
    return store_->CreateSession(testing_util::SmallFullSession(id, g_)).value().session_id;
  }

  // Appends n rows from `from`, clustering `cluster_pages` positional pages from `first_positional` of every head
  // into two clusters (even and odd positions).
  void Append(const std::string& id, int64_t from, int64_t n, int32_t cluster_pages, int64_t first_positional) {
    ASSERT_TRUE(
        testing_util::AppendWithEvenOddClusters(store_.get(), g_, id, from, n, cluster_pages, first_positional).ok());
  }

  // Every cluster of every head: 2 layers x 2 heads x 2 clusters.
  std::vector<BlockList> AllClusters() const {
    std::vector<BlockList> blocks;
    for (int32_t l = 0; l < g_.num_layers; ++l) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        blocks.push_back({l, h, {{BlockRef::Kind::kCluster, 0, 0}, {BlockRef::Kind::kCluster, 1, 0}}});
      }
    }
    return blocks;
  }

  // The runs' bytes in the arena, read under a fresh lease (which demands them: promotes what is cold).
  std::vector<std::string> ReadUnderLease(const std::string& id, const std::vector<BlockList>& blocks) {
    const LeaseInfo lease = store_->AcquireLease(id, absl::Minutes(1), "test").value();
    const std::vector<BlockLocation> locs = store_->ResolveBlocks(id, lease.lease_id, 0, blocks).value();
    std::vector<std::string> out;
    for (const BlockLocation& loc : locs) {
      for (const PoolView& p : store_->Pools()) {
        if (p.pool_id != loc.pool_id) continue;
        const uint8_t* run = p.arena + size_t{loc.first_page} * p.page_bytes;
        out.emplace_back(reinterpret_cast<const char*>(run), size_t{loc.num_pages} * p.page_bytes);
      }
    }
    EXPECT_TRUE(store_->ReleaseLease(lease.lease_id).ok());
    return out;
  }

  void GoIdleAndReap() {
    clock_.Advance(absl::Seconds(11));
    store_->ReapOnce();
  }

  KvGeometry g_;
  FakeClock clock_;
  std::unique_ptr<ShmArena> arena_;
  std::unique_ptr<ColdTier> tier_;
  std::unique_ptr<SessionStore> store_;
};

TEST_F(TiersTest, IdleClustersGoColdAndComeBackExactOnDemand) {
  const std::string id = Create("s");
  Append(id, 0, 40, /*cluster_pages=*/2, /*first_positional=*/4);
  const std::vector<std::string> before = ReadUnderLease(id, AllClusters());
  ASSERT_EQ(before.size(), 8u);

  GoIdleAndReap();
  StoreStats st = store_->Stats();
  EXPECT_EQ(st.cold_runs, 8);
  EXPECT_EQ(st.demoted_runs, 8);
  EXPECT_GT(st.cold_bytes, 0);
  store_->ReapOnce();  // idle still, but nothing new to demote
  EXPECT_EQ(store_->Stats().demoted_runs, 8);

  EXPECT_EQ(ReadUnderLease(id, AllClusters()), before);
  st = store_->Stats();
  EXPECT_EQ(st.cold_runs, 0);
  // Each run came back either ahead of the request (prefetch, started by the lease) or on demand.
  EXPECT_EQ(st.prefetch_hits + st.prefetch_misses, 8);
}

TEST_F(TiersTest, PrefetchPromotesTheRecentSelectionsAheadOfTheRequest) {
  const std::string id = Create("s");
  Append(id, 0, 40, 2, 4);
  // The session's last request selected the even clusters of layer 1.
  const std::vector<BlockList> selected = {{1, 0, {{BlockRef::Kind::kCluster, 0, 0}}},
                                           {1, 1, {{BlockRef::Kind::kCluster, 0, 0}}}};
  const std::vector<std::string> before = ReadUnderLease(id, selected);
  GoIdleAndReap();
  ASSERT_EQ(store_->Stats().cold_runs, 8);

  // A new question: the lease starts the prefetch; wait for it (no timing asserted, only an upper bound).
  const LeaseInfo lease = store_->AcquireLease(id, absl::Minutes(1), "test").value();
  for (int i = 0; i < 2000 && store_->Stats().prefetched_runs < 2; ++i) absl::SleepFor(absl::Milliseconds(5));
  StoreStats st = store_->Stats();
  EXPECT_EQ(st.prefetched_runs, 2);
  EXPECT_EQ(st.cold_runs, 6);
  EXPECT_TRUE(store_->ReleaseLease(lease.lease_id).ok());

  EXPECT_EQ(ReadUnderLease(id, selected), before);
  st = store_->Stats();
  EXPECT_EQ(st.prefetch_hits, 2);
  EXPECT_EQ(st.prefetch_misses, 0);
}

TEST_F(TiersTest, LeasedSessionsStayHotAndACommitPromotesEverything) {
  const std::string id = Create("s");
  Append(id, 0, 40, 2, 4);
  const std::vector<std::string> before = ReadUnderLease(id, AllClusters());
  const LeaseInfo lease = store_->AcquireLease(id, absl::Minutes(5), "test").value();
  GoIdleAndReap();
  EXPECT_EQ(store_->Stats().cold_runs, 0);
  EXPECT_TRUE(store_->ReleaseLease(lease.lease_id).ok());
  GoIdleAndReap();
  ASSERT_EQ(store_->Stats().cold_runs, 8);

  Append(id, 40, 8, 0, 0);  // a commit reads and moves pages: the session is promoted first
  EXPECT_EQ(store_->Stats().cold_runs, 0);
  EXPECT_EQ(ReadUnderLease(id, AllClusters()), before);
}

TEST(ColdTierTest, ReleasesTheRunsMemoryAndRestoresItsBytes) {
  std::unique_ptr<ColdTier> tier = ColdTier::Create(std::getenv("TEST_TMPDIR")).value();
  std::unique_ptr<ShmArena> arena = ShmArena::Create({"livekvcold", ShmArena::Prefault::kNone}).value();
  const size_t bytes = size_t{64} << 10;
  uint8_t* run = static_cast<uint8_t*>(arena->Allocate(bytes).value());
  for (size_t i = 0; i < bytes; ++i) run[i] = static_cast<uint8_t>(i * 7 + 3);
  const std::string expected(reinterpret_cast<const char*>(run), bytes);
  ASSERT_TRUE(tier->Demote({1, 42}, {run, bytes}).ok());
  EXPECT_TRUE(tier->IsCold({1, 42}));
  EXPECT_EQ(std::string(bytes, '\0'), std::string(reinterpret_cast<const char*>(run), bytes));  // memory released
  EXPECT_EQ(tier->stats().cold_bytes, static_cast<int64_t>(bytes));
  EXPECT_TRUE(tier->Promote({1, 42}, {run, bytes}).value());
  EXPECT_EQ(expected, std::string(reinterpret_cast<const char*>(run), bytes));
  EXPECT_FALSE(tier->Promote({1, 42}, {run, bytes}).value());  // hot now
  EXPECT_EQ(tier->stats().cold_runs, 0);
  EXPECT_FALSE(ColdTier::Create("/nonexistent-dir").ok());
  arena->Free(run, bytes);
}

}  // namespace
}  // namespace livekv
