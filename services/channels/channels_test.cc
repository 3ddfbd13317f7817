// The shared-memory and UCX channels against the gRPC path, with a real store server on 127.0.0.1:0 in this
// process (its pools in a ShmArena, UCX on loopback: UCX_NET_DEVICES=lo is set before UCX starts).
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/channels/block_locator.h"
#include "services/channels/channel_factory.h"
#include "services/channels/channel_test_util.h"
#include "services/channels/kv_channel.h"
#include "services/channels/shm_kv_channel.h"
#include "services/channels/ucx_kv_channel.h"

namespace livekv {
namespace {

using channel_testing::AppendPattern;
using channel_testing::CheckBlock;
using channel_testing::CreatePatternSession;
using channel_testing::IndexedBlock;
using channel_testing::ReadBlocks;
using channel_testing::SessionBlocks;
using channel_testing::SessionModel;
using channel_testing::SmallGeometry;
using channel_testing::TestStore;
using channel_testing::TestStoreOptions;
using ::testing::HasSubstr;

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    setenv("UCX_NET_DEVICES", "lo", 1);  // before any UCX context exists; nothing leaves loopback
    grpc_init();
  }
};
::testing::Environment* const environment = ::testing::AddGlobalTestEnvironment(new Environment);

std::unique_ptr<TestStore> StartStore(TestStoreOptions options = {}) {
  absl::StatusOr<std::unique_ptr<TestStore>> store = TestStore::Start(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

std::vector<BlockDestination> Destinations(std::vector<IndexedBlock*>& blocks) {
  std::vector<BlockDestination> out;
  for (IndexedBlock* b : blocks) out.push_back(b->destination());
  return out;
}

// A random subset of the blocks, grouped by (layer, head) as a decode step asks (any order within a head).
std::vector<IndexedBlock*> Subset(SessionBlocks& all, std::mt19937_64& rng, double keep) {
  std::vector<IndexedBlock*> out;
  std::bernoulli_distribution take(keep);
  for (IndexedBlock& b : all.blocks) {
    if (take(rng)) out.push_back(&b);
  }
  if (out.empty()) out.push_back(&all.blocks[rng() % all.blocks.size()]);
  return out;
}

TEST(ChannelsTest, EveryChannelReturnsTheBytesOfTheGrpcPath) {
  if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  auto t = StartStore();
  ASSERT_NE(t, nullptr);
  std::mt19937_64 rng(42);
  struct Case {
    KvGeometry g;
    int64_t tokens;
  };
  const std::vector<Case> cases = {
      {SmallGeometry(2, 2, 16, 8, DType::kF32, 8), 203},    // partial sink-free tail, clusters
      {SmallGeometry(3, 1, 64, 16, DType::kBF16, 4), 517},  // bf16, 2 KiB... 4 KiB pages
      {SmallGeometry(2, 3, 8, 4, DType::kF16, 0), 97},      // no sink
      {SmallGeometry(2, 2, 128, 32, DType::kBF16, 16), 1500},  // 16 KiB pages: runs of 16-256 KiB
  };
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    SCOPED_TRACE(absl::StrCat("case ", ci));
    const KvGeometry& g = cases[ci].g;
    auto session = CreatePatternSession(&t->client(), absl::StrCat("same-bytes-", ci), g, 100 + ci);
    ASSERT_TRUE(session.ok()) << session.status();
    // Three commits: clusters of various sizes, drops, and a partial last page.
    const int64_t third = cases[ci].tokens / 3;
    ASSERT_TRUE(AppendPattern(&t->client(), &*session, third, 3, 5, 0, &rng).ok());
    ASSERT_TRUE(AppendPattern(&t->client(), &*session, third, 2, 3, 1, &rng).ok());
    ASSERT_TRUE(AppendPattern(&t->client(), &*session, cases[ci].tokens - 2 * third, 0, 0, 0, &rng).ok());
    auto lease = t->client().AcquireLease(session->id, absl::Seconds(30), "test");
    ASSERT_TRUE(lease.ok());
    auto blocks = ReadBlocks(&t->stub(), session->id);
    ASSERT_TRUE(blocks.ok()) << blocks.status();

    std::map<std::string, std::unique_ptr<KvChannel>> channels;
    for (const char* kind : {"shm", "ucx", "grpc"}) {
      auto ch = OpenKvChannel(&t->client(), session->id, *lease, blocks->version, {kind});
      ASSERT_TRUE(ch.ok()) << kind << ": " << ch.status();
      EXPECT_EQ((*ch)->name(), kind);
      channels[kind] = std::move(*ch);
    }
    for (int round = 0; round < 6; ++round) {
      std::vector<IndexedBlock*> subset = Subset(*blocks, rng, round == 0 ? 1.0 : 0.3);
      std::vector<std::string> results;
      for (const char* kind : {"grpc", "shm", "ucx"}) {
        for (IndexedBlock* b : subset) std::fill(b->buffer.begin(), b->buffer.end(), 0xEE);
        std::vector<BlockDestination> dst = Destinations(subset);
        int64_t bytes = -1;
        const absl::Status s = channels[kind]->Fetch(dst, &bytes);
        ASSERT_TRUE(s.ok()) << kind << ": " << s;
        std::string all;
        for (IndexedBlock* b : subset) {
          EXPECT_EQ(CheckBlock(g.layout, session->tag, *b, b->buffer), "") << kind;
          all.append(b->buffer.begin(), b->buffer.end());
        }
        EXPECT_EQ(bytes, static_cast<int64_t>(all.size())) << kind;
        results.push_back(std::move(all));
      }
      EXPECT_TRUE(results[0] == results[1]) << "shm differs from grpc in round " << round;
      EXPECT_TRUE(results[0] == results[2]) << "ucx differs from grpc in round " << round;
    }
    EXPECT_TRUE(t->client().ReleaseLease(*lease).ok());
  }
}

// Fixture: one pattern session with clusters and pages, a lease, and its blocks.
class ChannelFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
    Open(TestStoreOptions{});
  }
  void Open(const TestStoreOptions& options) {
    t_ = StartStore(options);
    ASSERT_NE(t_, nullptr);
    auto s = CreatePatternSession(&t_->client(), "fixture", g_, 7);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *s;
    ASSERT_TRUE(AppendPattern(&t_->client(), &session_, 160, 4, 6, 0, &rng_).ok());
    auto lease = t_->client().AcquireLease(session_.id, absl::Seconds(30), "test");
    ASSERT_TRUE(lease.ok());
    lease_ = *lease;
    auto blocks = ReadBlocks(&t_->stub(), session_.id);
    ASSERT_TRUE(blocks.ok());
    blocks_ = std::move(*blocks);
  }
  std::vector<BlockDestination> All() {
    std::vector<BlockDestination> out;
    for (IndexedBlock& b : blocks_.blocks) out.push_back(b.destination());
    return out;
  }
  void ExpectPattern() {
    for (const IndexedBlock& b : blocks_.blocks) EXPECT_EQ(CheckBlock(g_.layout, session_.tag, b, b.buffer), "");
  }
  v1::OpenChannelResponse Offer() {
    auto offer = t_->client().OpenChannel(session_.id, lease_, {});
    EXPECT_TRUE(offer.ok()) << offer.status();
    return *offer;
  }

  const KvGeometry g_ = SmallGeometry(2, 2, 16, 8, DType::kF32, 8);
  std::mt19937_64 rng_{3};
  std::unique_ptr<TestStore> t_;
  SessionModel session_;
  StoreLease lease_;
  SessionBlocks blocks_;
};

TEST_F(ChannelFixture, ShmResolvesEachBlockOnceThenServesFromItsCache) {
  const v1::OpenChannelResponse offer = Offer();
  ASSERT_TRUE(offer.has_shm());
  ASSERT_TRUE(offer.has_ucx());
  EXPECT_THAT(offer.shm().pools(0).name(), HasSubstr("/livekvtest-"));
  auto ch = ShmKvChannel::Open(&t_->client(), session_.id, lease_, blocks_.version, offer.shm(), g_.layout, {});
  ASSERT_TRUE(ch.ok()) << ch.status();
  std::vector<BlockDestination> all = All();
  ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
  ExpectPattern();
  ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
  ASSERT_TRUE((*ch)->Fetch({all[3], all[1]}, nullptr).ok());
  EXPECT_EQ((*ch)->stats().fetches, 3);
  EXPECT_EQ((*ch)->stats().resolve_calls, 1);
  EXPECT_EQ((*ch)->stats().resolved_blocks, static_cast<int64_t>(all.size()));
  EXPECT_EQ((*ch)->stats().cached_blocks, static_cast<int64_t>(all.size()) + 2);
  auto stats = t_->client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->resolved_blocks(), static_cast<int64_t>(all.size()));
  EXPECT_EQ(stats->pinned_runs(), static_cast<int64_t>(all.size()));  // every block is its own run
  EXPECT_GT(stats->pinned_bytes(), 0);
}

TEST_F(ChannelFixture, PinnedRunsSurviveClusteringAndDeletionUntilTheLeaseEnds) {
  auto ch = OpenKvChannel(&t_->client(), session_.id, lease_, blocks_.version, {"shm"});
  ASSERT_TRUE(ch.ok());
  std::vector<BlockDestination> all = All();
  ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
  // Cluster away every complete page and write more (possibly over freed pages), then delete the session: the
  // pinned runs keep their bytes, and the cached locations serve them.
  ASSERT_TRUE(AppendPattern(&t_->client(), &session_, 40, 50, 4, 0, &rng_).ok());
  auto other = CreatePatternSession(&t_->client(), "other", g_, 8);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(AppendPattern(&t_->client(), &*other, 300, 0, 0, 0, &rng_).ok());
  ASSERT_TRUE(t_->client().DeleteSession(session_.id).ok());
  for (IndexedBlock& b : blocks_.blocks) std::fill(b.buffer.begin(), b.buffer.end(), 0xEE);
  ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
  ExpectPattern();
  auto stats = t_->client().Stats();
  ASSERT_TRUE(stats.ok());
  const int64_t held = stats->pool_used_bytes();
  EXPECT_GT(stats->pinned_runs(), 0);
  // The lease ends: its pins go, the deleted session's pages return to the pool, and the cached locations are
  // stale (ABORTED; the fallback does not apply to ABORTED).
  ASSERT_TRUE(t_->client().ReleaseLease(lease_).ok());
  stats = t_->client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->pinned_runs(), 0);
  EXPECT_EQ(stats->pinned_bytes(), 0);
  EXPECT_LT(stats->pool_used_bytes(), held);
  ASSERT_TRUE(t_->client().DeleteSession("other").ok());
  stats = t_->client().Stats();
  EXPECT_EQ(stats->pool_used_bytes(), 0);
  const absl::Status s = (*ch)->Fetch(all, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("changed generation"));
}

TEST_F(ChannelFixture, UcxDetectsAnEndedLeaseByGeneration) {
  const v1::OpenChannelResponse offer = Offer();
  auto ch = UcxKvChannel::Open(&t_->client(), session_.id, lease_, blocks_.version, offer.ucx(), g_.layout, {});
  ASSERT_TRUE(ch.ok()) << ch.status();
  std::vector<BlockDestination> all = All();
  ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
  ExpectPattern();
  EXPECT_EQ((*ch)->stats().resolve_calls, 1);
  ASSERT_TRUE(t_->client().ReleaseLease(lease_).ok());
  const absl::Status s = (*ch)->Fetch(all, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_EQ((*ch)->stats().stale_runs, 1);
  // Forgotten: the next Fetch resolves again, with the lease gone.
  EXPECT_EQ((*ch)->Fetch(all, nullptr).code(), absl::StatusCode::kNotFound);
}

TEST_F(ChannelFixture, ADestinationOfTheWrongSizeIsInvalid) {
  auto ch = OpenKvChannel(&t_->client(), session_.id, lease_, blocks_.version, {"shm"});
  ASSERT_TRUE(ch.ok());
  std::vector<uint8_t> small(100);
  BlockDestination d = blocks_.blocks[0].destination();
  d.destination = absl::MakeSpan(small);
  const absl::Status s = (*ch)->Fetch({d}, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("holds 100 bytes"));
}

TEST_F(ChannelFixture, AStaleVersionIsAbortedLikeRecall) {
  const int64_t old_version = blocks_.version;
  // Cluster the pages away: a page of the old index no longer exists.
  ASSERT_TRUE(AppendPattern(&t_->client(), &session_, 8, 50, 4, 0, &rng_).ok());
  for (const char* kind : {"shm", "ucx", "grpc"}) {
    auto ch = OpenKvChannel(&t_->client(), session_.id, lease_, old_version, {kind});
    ASSERT_TRUE(ch.ok()) << kind;
    std::vector<BlockDestination> pages;
    for (IndexedBlock& b : blocks_.blocks) {
      if (b.block.kind == BlockRef::Kind::kPage) pages.push_back(b.destination());
    }
    ASSERT_FALSE(pages.empty());
    const absl::Status s = (*ch)->Fetch(pages, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << kind << ": " << s;
  }
}

TEST_F(ChannelFixture, ChoosesShmWhereTheSegmentsOpen) {
  auto ch = OpenKvChannel(&t_->client(), session_.id, lease_, blocks_.version);
  ASSERT_TRUE(ch.ok()) << ch.status();
  EXPECT_EQ((*ch)->name(), "shm");
  // Another host cannot open the segments: an offer naming segments that do not exist here is NOT_FOUND.
  v1::OpenChannelResponse offer = Offer();
  offer.mutable_shm()->mutable_pools(0)->set_name("/livekvtest-on-another-host");
  auto shm = ShmKvChannel::Open(&t_->client(), session_.id, lease_, blocks_.version, offer.shm(), g_.layout, {});
  EXPECT_EQ(shm.status().code(), absl::StatusCode::kNotFound) << shm.status();
  EXPECT_EQ(OpenKvChannel(&t_->client(), session_.id, lease_, blocks_.version, {"carrier-pigeon"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenKvChannel(&t_->client(), session_.id, {"no-such-lease", session_.id}, 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ChannelChoiceTest, UcxWithoutSharedMemoryAndGrpcWithoutEither) {
  if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  std::mt19937_64 rng(5);
  const KvGeometry g = SmallGeometry(2, 1, 16, 8, DType::kBF16, 0);
  for (const auto& [shm, ucx, expected] :
       std::vector<std::tuple<bool, bool, std::string>>{{false, true, "ucx"}, {false, false, "grpc"}}) {
    TestStoreOptions o;
    o.shm = shm;
    o.ucx = ucx;
    auto t = StartStore(o);
    ASSERT_NE(t, nullptr);
    auto session = CreatePatternSession(&t->client(), "choice", g, 1);
    ASSERT_TRUE(session.ok());
    ASSERT_TRUE(AppendPattern(&t->client(), &*session, 50, 2, 2, 0, &rng).ok());
    auto lease = t->client().AcquireLease(session->id, absl::Seconds(30), "test");
    ASSERT_TRUE(lease.ok());
    auto ch = OpenKvChannel(&t->client(), session->id, *lease, 0);
    ASSERT_TRUE(ch.ok()) << ch.status();
    EXPECT_EQ((*ch)->name(), expected);
    auto blocks = ReadBlocks(&t->stub(), session->id);
    ASSERT_TRUE(blocks.ok());
    std::vector<BlockDestination> all;
    for (IndexedBlock& b : blocks->blocks) all.push_back(b.destination());
    ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
    for (const IndexedBlock& b : blocks->blocks) EXPECT_EQ(CheckBlock(g.layout, 1, b, b.buffer), "");
    // A forced channel the store does not offer is UNAVAILABLE, saying why.
    const absl::Status forced = OpenKvChannel(&t->client(), session->id, *lease, 0, {"shm"}).status();
    EXPECT_EQ(forced.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(forced.message()), HasSubstr("--noshm_arena"));
    if (!ucx) {
      const absl::Status u = OpenKvChannel(&t->client(), session->id, *lease, 0, {"ucx"}).status();
      EXPECT_EQ(u.code(), absl::StatusCode::kUnavailable);
      EXPECT_THAT(std::string(u.message()), HasSubstr("--noucx"));
    }
  }
}

// A primary that always fails as a dead store's channel does.
class DeadChannel : public KvChannel {
 public:
  explicit DeadChannel(int* calls) : calls_(calls) {}
  std::string name() const override { return "shm"; }
  absl::Status Fetch(const std::vector<BlockDestination>&, int64_t*) override {
    ++*calls_;
    return absl::UnavailableError("the KV store that owned shared-memory segment /x is gone");
  }

 private:
  int* const calls_;
};

TEST_F(ChannelFixture, FallsBackToGrpcWhenThePrimaryIsUnavailable) {
  int calls = 0;
  FallbackKvChannel ch(std::make_unique<DeadChannel>(&calls),
                       std::make_unique<GrpcKvChannel>(&t_->client(), session_.id, lease_, blocks_.version));
  EXPECT_EQ(ch.name(), "shm");
  std::vector<BlockDestination> all = All();
  int64_t bytes = 0;
  ASSERT_TRUE(ch.Fetch(all, &bytes).ok());
  ExpectPattern();
  EXPECT_TRUE(ch.fell_back());
  EXPECT_EQ(ch.name(), "grpc");
  ASSERT_TRUE(ch.Fetch(all, &bytes).ok());
  EXPECT_EQ(calls, 1);  // the primary is not retried
}

}  // namespace
}  // namespace livekv
