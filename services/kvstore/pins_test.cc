// SessionStore's side of the direct channels: ResolveBlocks' locations, the pins it keeps for a lease, and the page
// generations incremented when the last lease pinning a run ends (session_store.h, "Pins and generations").
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/allocator.h"
#include "common/clock.h"
#include "common/shm/shm_arena.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/livekv/v1/kvstore.pb.h"
#include "services/kvstore/data_plane.h"
#include "services/kvstore/kv_test_util.h"
#include "services/kvstore/session_store.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;
using testing_util::MakeRows;
using testing_util::Rows;

class PinsTest : public ::testing::Test {
 protected:
  PinsTest() {
    g_.num_layers = 2;
    g_.num_kv_heads = 2;
    g_.layout = PageLayout{4, 8, DType::kF32};
    g_.sink_tokens = 4;
    arena_ = ShmArena::Create({"livekvtest", ShmArena::Prefault::kNone}).value();
    SessionStore::Options o;
    o.pool_bytes = size_t{1} << 20;
    store_ = std::make_unique<SessionStore>(o, &clock_, arena_.get());
  }

  std::string Create(const std::string& id) {
    return store_->CreateSession(testing_util::SmallFullSession(id, g_)).value().session_id;
  }

  // Appends n rows (positions from `from`), clustering the first `cluster_pages` positional pages of every head
  // into two clusters (even and odd positions).
  void Append(const std::string& id, int64_t from, int64_t n, int32_t cluster_pages = 0, int64_t first_positional = 4) {
    ASSERT_TRUE(
        testing_util::AppendWithEvenOddClusters(store_.get(), g_, id, from, n, cluster_pages, first_positional).ok());
  }

  // The generation of a pool page, as a reader would load it.
  uint64_t Generation(const BlockLocation& loc) {
    for (const PoolView& p : store_->Pools()) {
      if (p.pool_id == loc.pool_id) return p.generations[loc.first_page];
    }
    ADD_FAILURE() << "no pool " << loc.pool_id;
    return 0;
  }

  KvGeometry g_;
  FakeClock clock_;
  std::unique_ptr<ShmArena> arena_;
  std::unique_ptr<SessionStore> store_;
};

TEST_F(PinsTest, LocationsAreTheRecallsRunsInTheSharedArena) {
  const std::string id = Create("s");
  Append(id, 0, 30, /*cluster_pages=*/2);
  const LeaseInfo lease = store_->AcquireLease(id, absl::Seconds(10), "t").value();
  const std::vector<BlockList> blocks = {
      {0, 1, {{BlockRef::Kind::kSink, 0, 0}, {BlockRef::Kind::kCluster, 1, 0}, {BlockRef::Kind::kPage, 0, 12}}},
      {1, 0, {{BlockRef::Kind::kCluster, 0, 0}, {BlockRef::Kind::kPage, 0, 28}}}};
  const std::vector<BlockLocation> locs = store_->ResolveBlocks(id, lease.lease_id, 0, blocks).value();
  ASSERT_EQ(locs.size(), 5u);
  const PoolView pool = store_->SessionPool(id, lease.lease_id).value();
  EXPECT_EQ(pool.page_bytes, g_.layout.page_bytes());
  // The arena and the generation table are segments of the store's shared-memory arena.
  EXPECT_EQ(arena_->Find(pool.arena)->base, pool.arena);
  EXPECT_EQ(arena_->Find(pool.generations)->base, static_cast<void*>(pool.generations));
  EXPECT_EQ(locs[0].tokens, 4);   // the sink
  EXPECT_EQ(locs[1].tokens, 4);   // odd positions of 4..11
  EXPECT_EQ(locs[2].tokens, 4);   // positions 12..15
  EXPECT_EQ(locs[4].tokens, 2);   // 28, 29: a partial page
  EXPECT_EQ(locs[1].num_pages, 1u);
  // The runs are what Recall serves (its rows past the tokens are zero; compare the token rows).
  auto reader = store_->StartRecall(id, lease.lease_id, 0, blocks).value();
  std::string recalled;
  ASSERT_TRUE(reader->Next(size_t{1} << 20, &recalled).ok());
  size_t offset = 0;
  for (const BlockLocation& loc : locs) {
    const size_t bytes = loc.num_pages * pool.page_bytes;
    const absl::Span<const uint8_t> run(pool.arena + loc.first_page * pool.page_bytes, bytes);
    EXPECT_EQ(testing_util::ValidRows(run, g_.layout, loc.tokens),
              testing_util::ValidRows(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(recalled.data()) + offset,
                                                          bytes),
                                      g_.layout, loc.tokens));
    EXPECT_EQ(loc.generation, 0u);
    offset += bytes;
  }
  EXPECT_EQ(offset, recalled.size());
  const StoreStats st = store_->Stats();
  EXPECT_EQ(st.pinned_runs, 5);
  EXPECT_EQ(st.resolved_blocks, 5);
  EXPECT_EQ(st.pinned_bytes, 5 * static_cast<int64_t>(g_.layout.page_bytes()));
}

TEST_F(PinsTest, GenerationsMoveWhenTheLastLeaseOfARunEnds) {
  const std::string id = Create("s");
  Append(id, 0, 20);
  const std::vector<BlockList> page = {{0, 0, {{BlockRef::Kind::kPage, 0, 8}}}};
  const LeaseInfo a = store_->AcquireLease(id, absl::Seconds(10), "a").value();
  const LeaseInfo b = store_->AcquireLease(id, absl::Seconds(20), "b").value();
  const BlockLocation la = store_->ResolveBlocks(id, a.lease_id, 0, page).value()[0];
  // Resolving again under the same lease pins nothing new.
  EXPECT_EQ(store_->ResolveBlocks(id, a.lease_id, 0, page).value()[0].generation, la.generation);
  const BlockLocation lb = store_->ResolveBlocks(id, b.lease_id, 0, page).value()[0];
  EXPECT_EQ(la.first_page, lb.first_page);
  EXPECT_EQ(store_->Stats().pinned_runs, 1);
  ASSERT_TRUE(store_->ReleaseLease(a.lease_id).ok());
  EXPECT_EQ(Generation(la), la.generation);  // b still pins it
  // b expires (fake clock, the reaper's pass): the last pin goes, after its generation moved.
  clock_.Advance(absl::Seconds(21));
  store_->ReapOnce();
  EXPECT_EQ(Generation(la), la.generation + 1);
  EXPECT_EQ(store_->Stats().pinned_runs, 0);
  EXPECT_EQ(store_->Stats().expired_leases, 1);
  // A new lease resolves the run at its new generation.
  const LeaseInfo c = store_->AcquireLease(id, absl::Seconds(10), "c").value();
  EXPECT_EQ(store_->ResolveBlocks(id, c.lease_id, 0, page).value()[0].generation, la.generation + 1);
}

TEST_F(PinsTest, APinnedPageOutlivesItsClusteringAndItsSession) {
  const std::string id = Create("s");
  Append(id, 0, 20);
  const LeaseInfo lease = store_->AcquireLease(id, absl::Seconds(10), "t").value();
  const BlockLocation loc =
      store_->ResolveBlocks(id, lease.lease_id, 0, {{1, 1, {{BlockRef::Kind::kPage, 0, 4}}}}).value()[0];
  const PoolView pool = store_->SessionPool(id, lease.lease_id).value();
  const std::string before(reinterpret_cast<const char*>(pool.arena + loc.first_page * pool.page_bytes),
                           pool.page_bytes);
  const int64_t used = store_->Stats().pool_used_bytes;
  // Cluster the page away, fill the pool with another session, delete the first: the pinned page is untouched.
  Append(id, 20, 4, /*cluster_pages=*/4);
  const std::string other = Create("other");
  Append(other, 0, 64);
  ASSERT_TRUE(store_->DeleteSession(id).ok());
  EXPECT_EQ(std::memcmp(before.data(), pool.arena + loc.first_page * pool.page_bytes, pool.page_bytes), 0);
  EXPECT_GT(store_->Stats().pool_used_bytes, used);
  ASSERT_TRUE(store_->ReleaseLease(lease.lease_id).ok());
  EXPECT_EQ(pool.generations[loc.first_page], loc.generation + 1);
  ASSERT_TRUE(store_->DeleteSession(other).ok());
  EXPECT_EQ(store_->Stats().pool_used_bytes, 0);
  EXPECT_EQ(store_->Stats().pinned_runs, 0);
}

TEST_F(PinsTest, LeaseChecksAsRecall) {
  const std::string id = Create("s");
  const std::string other = Create("other");
  Append(id, 0, 10);
  const LeaseInfo theirs = store_->AcquireLease(other, absl::Seconds(10), "t").value();
  const std::vector<BlockList> sink = {{0, 0, {{BlockRef::Kind::kSink, 0, 0}}}};
  EXPECT_EQ(store_->ResolveBlocks(id, "", 0, sink).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->ResolveBlocks(id, "lease-x", 0, sink).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ResolveBlocks(id, theirs.lease_id, 0, sink).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->SessionPool(id, theirs.lease_id).status().code(), absl::StatusCode::kFailedPrecondition);
  const LeaseInfo mine = store_->AcquireLease(id, absl::Seconds(10), "t").value();
  EXPECT_EQ(store_->ResolveBlocks(id, mine.lease_id, -1, sink).status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status no_cluster =
      store_->ResolveBlocks(id, mine.lease_id, 0, {{0, 0, {{BlockRef::Kind::kCluster, 3, 0}}}}).status();
  EXPECT_EQ(no_cluster.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_cluster.message()), HasSubstr("has no cluster 3"));
  EXPECT_EQ(store_->ResolveBlocks(id, mine.lease_id, 0, {{0, 0, {{BlockRef::Kind::kPage, 0, 400}}}}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ResolveBlocks(id, mine.lease_id, 0, {{5, 0, {}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PinsTest, TheDataPlaneOffersTheSegmentsByName) {
  const std::string id = Create("s");
  const LeaseInfo lease = store_->AcquireLease(id, absl::Seconds(10), "t").value();
  const PoolView pool = store_->SessionPool(id, lease.lease_id).value();
  DataPlane plane({arena_.get(), /*ucx=*/false, {}});
  v1::OpenChannelResponse r;
  plane.Offer(pool, true, true, &r);
  ASSERT_TRUE(r.has_shm());
  EXPECT_FALSE(r.has_ucx());
  EXPECT_THAT(r.ucx_unavailable(), HasSubstr("--noucx"));
  const v1::ShmPool& p = r.shm().pools(0);
  EXPECT_EQ(p.pool_id(), pool.pool_id);
  EXPECT_EQ(p.name(), arena_->Find(pool.arena)->name);
  EXPECT_EQ(p.generation_segment(), arena_->Find(pool.generations)->name);
  EXPECT_EQ(p.page_bytes(), static_cast<int64_t>(pool.page_bytes));
  EXPECT_EQ(p.num_pages(), pool.num_pages);
  EXPECT_GE(p.size(), p.page_bytes() * p.num_pages());
  // Without a shared-memory arena there is nothing to name.
  DataPlane host_only({nullptr, false, {}});
  v1::OpenChannelResponse h;
  host_only.Offer(pool, true, false, &h);
  EXPECT_FALSE(h.has_shm());
  EXPECT_THAT(h.shm_unavailable(), HasSubstr("--noshm_arena"));
}

}  // namespace
}  // namespace livekv
