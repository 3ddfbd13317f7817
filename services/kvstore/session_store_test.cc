#include "services/kvstore/session_store.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/allocator.h"
#include "common/clock.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/kvstore/kv_test_util.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using testing_util::AppendRows;
using testing_util::MakeRows;
using testing_util::PlanClusterings;
using testing_util::Rows;

#define EXPECT_CODE(expr, code_)                                              \
  do {                                                                        \
    const absl::Status s_ = (expr);                                           \
    EXPECT_EQ(s_.code(), absl::StatusCode::code_) << #expr << ": " << s_;     \
  } while (0)

#define EXPECT_ERROR(expr, code_, text)                                       \
  do {                                                                        \
    const absl::Status s_ = (expr);                                           \
    EXPECT_EQ(s_.code(), absl::StatusCode::code_) << #expr << ": " << s_;     \
    EXPECT_THAT(std::string(s_.message()), HasSubstr(text)) << #expr;         \
  } while (0)

KvGeometry TestGeometry() {
  KvGeometry g;
  g.num_layers = 3;
  g.num_kv_heads = 2;
  g.layout = PageLayout{4, 8, DType::kBF16};
  g.sink_tokens = 4;
  return g;
}

PolicyOptions TestPolicy() {
  PolicyOptions p;
  p.window = 8;
  p.cluster_window = 8;
  p.window_clusters = 2;
  p.budget = 64;
  return p;
}

// The run of a block with rows past its tokens zeroed: what Recall serves.
std::string ZeroPadded(absl::Span<const uint8_t> run, const PageLayout& L, int64_t tokens) {
  std::string out(reinterpret_cast<const char*>(run.data()), run.size());
  for (size_t page = 0; page * L.page_bytes() < run.size(); ++page) {
    for (int32_t r = 0; r < L.page_tokens; ++r) {
      if (int64_t(page) * L.page_tokens + r < tokens) continue;
      std::memset(out.data() + page * L.page_bytes() + r * L.row_bytes(), 0, L.row_bytes());
      std::memset(out.data() + page * L.page_bytes() + (L.page_tokens + r) * L.row_bytes(), 0, L.row_bytes());
    }
  }
  return out;
}

// Every block of every head of a local sequence, in SelectAll order.
std::vector<BlockList> AllBlocks(const SequenceKv& kv) {
  std::vector<BlockList> out;
  for (int32_t l = 0; l < kv.geometry().num_layers; ++l) {
    for (int32_t h = 0; h < kv.geometry().num_kv_heads; ++h) {
      out.push_back({l, h, kv.SelectedBlocks(l, h, kv.SelectAll(l, h))});
    }
  }
  return out;
}

// The same from a store's index.
std::vector<BlockList> AllBlocks(const SessionIndex& index) {
  std::vector<BlockList> out;
  for (const HeadIndexData& h : index.heads) {
    BlockList list{h.layer, h.kv_head, {}};
    if (h.sink_count > 0) list.blocks.push_back({BlockRef::Kind::kSink, 0, 0});
    for (size_t c = 0; c < h.cluster_sizes.size(); ++c) {
      list.blocks.push_back({BlockRef::Kind::kCluster, static_cast<int32_t>(c), 0});
    }
    for (int64_t p : h.page_first_positions) list.blocks.push_back({BlockRef::Kind::kPage, 0, p});
    out.push_back(std::move(list));
  }
  return out;
}

// What Recall of `blocks` must return, from a local sequence.
std::string ExpectedRecall(const SequenceKv& kv, const std::vector<BlockList>& blocks) {
  std::string out;
  for (const BlockList& list : blocks) {
    for (const BlockRef& b : list.blocks) {
      auto run = kv.BlockBytes(list.layer, list.kv_head, b);
      CHECK(run.ok()) << run.status();
      out += ZeroPadded(*run, kv.geometry().layout, testing_util::BlockTokens(kv, list.layer, list.kv_head, b));
    }
  }
  return out;
}

void ExpectIndexMatches(const SessionIndex& index, const SequenceKv& kv) {
  const int64_t d = kv.geometry().layout.head_dim;
  ASSERT_EQ(index.num_tokens, kv.num_tokens());
  ASSERT_EQ(index.heads.size(), size_t(kv.geometry().num_layers * kv.geometry().num_kv_heads));
  for (const HeadIndexData& hi : index.heads) {
    SCOPED_TRACE(::testing::Message() << "layer " << hi.layer << " head " << hi.kv_head);
    const HeadKv& head = kv.head(hi.layer, hi.kv_head);
    EXPECT_EQ(hi.sink_count, head.sink_count());
    EXPECT_EQ(hi.cluster_sizes, head.cluster_sizes());
    EXPECT_EQ(hi.centroids, std::vector<float>(head.centroids(), head.centroids() + head.num_clusters() * d));
    std::vector<int32_t> positions;
    for (int32_t c = 0; c < head.num_clusters(); ++c) {
      positions.insert(positions.end(), head.cluster(c).positions.begin(), head.cluster(c).positions.end());
    }
    EXPECT_EQ(hi.cluster_positions, positions);
    ASSERT_EQ(hi.page_first_positions.size(), size_t(head.num_pages()));
    for (int32_t p = 0; p < head.num_pages(); ++p) {
      EXPECT_EQ(hi.page_first_positions[p], head.page(p).first_position);
      EXPECT_EQ(hi.page_counts[p], head.page(p).count);
    }
    EXPECT_EQ(hi.page_hi, std::vector<float>(head.page_hi(), head.page_hi() + head.num_complete_pages() * d));
    EXPECT_EQ(hi.page_lo, std::vector<float>(head.page_lo(), head.page_lo() + head.num_complete_pages() * d));
  }
}

bool SameIndex(const SessionIndex& a, const SessionIndex& b) {
  if (a.version != b.version || a.num_tokens != b.num_tokens || a.heads.size() != b.heads.size()) return false;
  for (size_t i = 0; i < a.heads.size(); ++i) {
    const HeadIndexData& x = a.heads[i];
    const HeadIndexData& y = b.heads[i];
    if (x.layer != y.layer || x.kv_head != y.kv_head || x.sink_count != y.sink_count ||
        x.cluster_sizes != y.cluster_sizes || x.centroids != y.centroids || x.cluster_positions != y.cluster_positions ||
        x.page_first_positions != y.page_first_positions || x.page_counts != y.page_counts || x.page_hi != y.page_hi ||
        x.page_lo != y.page_lo) {
      return false;
    }
  }
  return true;
}

class SessionStoreTest : public ::testing::Test {
 protected:
  SessionStoreTest() { Reset(SessionStore::Options{}); }

  void Reset(SessionStore::Options options) {
    if (options.pool_bytes == size_t{4} << 30) options.pool_bytes = size_t{8} << 20;
    store_.reset();
    store_ = std::make_unique<SessionStore>(options, &clock_, &host_);
  }

  // A pool for local sequences of the current geometry (kept until the test ends).
  PagePool* LocalPool() {
    local_pools_.push_back(PagePool::Create(&host_, {g_.layout.page_bytes(), size_t{8} << 20}).value());
    return local_pools_.back().get();
  }

  SessionInfo Create(const std::string& id = "", const std::string& tenant = "",
                     absl::Duration ttl = absl::ZeroDuration()) {
    NewSession ns;
    ns.session_id = id;
    ns.tenant = tenant;
    ns.model = "tiny";
    ns.geometry = g_;
    ns.policy = TestPolicy();
    ns.ttl = ttl;
    absl::StatusOr<SessionInfo> s = store_->CreateSession(ns);
    CHECK(s.ok()) << s.status();
    return *s;
  }

  // Stages `rows` (in pieces of 3 rows) and `m` into a begun append.
  absl::Status Stage(const std::string& append_id, const Rows& rows, const Maintenance& m) {
    const size_t row_bytes = g_.num_kv_heads * g_.layout.row_bytes();
    for (int32_t l = 0; l < g_.num_layers; ++l) {
      for (int64_t r = 0; r < rows.n; r += 3) {
        const int64_t k = std::min<int64_t>(3, rows.n - r);
        absl::StatusOr<int64_t> got = store_->StageRows(append_id, l, r, k, rows.keys[l].substr(r * row_bytes, k * row_bytes),
                                                        rows.values[l].substr(r * row_bytes, k * row_bytes));
        if (!got.ok()) return got.status();
      }
    }
    for (const HeadClustering& c : m.clusterings) {
      if (absl::StatusOr<int64_t> got = store_->StageClustering(append_id, c); !got.ok()) return got.status();
    }
    if (m.drop_pages > 0) {
      if (absl::StatusOr<int64_t> got = store_->StageDropPages(append_id, m.drop_pages); !got.ok()) return got.status();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<SessionInfo> Append(const std::string& id, const Rows& rows, const Maintenance& m = {}) {
    absl::StatusOr<SessionInfo> info = store_->GetSession(id);
    if (!info.ok()) return info.status();
    absl::StatusOr<AppendTicket> t = store_->BeginAppend(id, info->num_tokens, rows.n, absl::ZeroDuration());
    if (!t.ok()) return t.status();
    if (absl::Status s = Stage(t->append_id, rows, m); !s.ok()) {
      (void)store_->AbortAppend(t->append_id);
      return s;
    }
    absl::StatusOr<SessionInfo> committed = store_->CommitAppend(t->append_id);
    if (!committed.ok()) (void)store_->AbortAppend(t->append_id);
    return committed;
  }

  // Everything a reader can observe of a session: its info, full index and every block's bytes.
  struct Snapshot {
    SessionInfo info;
    SessionIndex index;
    std::string bytes;
  };
  Snapshot Snap(const std::string& id) {
    Snapshot s;
    s.info = store_->GetSession(id).value();
    s.index = store_->GetIndex(id, {}, true).value();
    const LeaseInfo lease = store_->AcquireLease(id, absl::ZeroDuration(), "snapshot").value();
    std::unique_ptr<RecallReader> r = store_->StartRecall(id, lease.lease_id, 0, AllBlocks(s.index)).value();
    std::string piece;
    while (!r->done()) {
      CHECK(r->Next(1000, &piece).ok());
      s.bytes += piece;
    }
    CHECK(store_->ReleaseLease(lease.lease_id).ok());
    return s;
  }
  void ExpectUnchanged(const Snapshot& before, const std::string& id) {
    const Snapshot after = Snap(id);
    EXPECT_EQ(after.info.num_tokens, before.info.num_tokens);
    EXPECT_EQ(after.info.version, before.info.version);
    EXPECT_EQ(after.info.bytes, before.info.bytes);
    EXPECT_TRUE(SameIndex(before.index, after.index));
    EXPECT_EQ(before.bytes.size(), after.bytes.size());
    EXPECT_TRUE(before.bytes == after.bytes) << "block bytes changed";
  }

  std::string RecallAll(const std::string& id, const std::string& lease, int64_t version,
                        const std::vector<BlockList>& blocks, size_t piece = 777) {
    std::unique_ptr<RecallReader> r = store_->StartRecall(id, lease, version, blocks).value();
    std::string out, chunk;
    while (!r->done()) {
      CHECK(r->Next(piece, &chunk).ok());
      out += chunk;
    }
    return out;
  }

  FakeClock clock_;
  HostAllocator host_;
  KvGeometry g_ = TestGeometry();
  std::vector<std::unique_ptr<PagePool>> local_pools_;  // outlive the store's sessions and local sequences
  std::unique_ptr<SessionStore> store_;
};

TEST_F(SessionStoreTest, CreateGetListDelete) {
  const SessionInfo a = Create("alpha", "t1");
  EXPECT_EQ(a.session_id, "alpha");
  EXPECT_EQ(a.tenant, "t1");
  EXPECT_EQ(a.model, "tiny");
  EXPECT_EQ(a.num_tokens, 0);
  EXPECT_EQ(a.version, 0);
  EXPECT_EQ(a.bytes, g_.num_layers * g_.num_kv_heads * 1 * int64_t(g_.layout.page_bytes()));  // the sink pages
  EXPECT_EQ(a.created, clock_.Now());
  EXPECT_EQ(a.expires, clock_.Now() + absl::Hours(1));
  const SessionInfo b = Create("", "");
  EXPECT_THAT(b.session_id, MatchesRegex("[0-9a-f]{16}"));
  EXPECT_EQ(b.tenant, "default");
  const SessionInfo c = Create("  gamma.1_x-y ", "t1");
  EXPECT_EQ(c.session_id, "gamma.1_x-y");

  EXPECT_EQ(store_->GetSession("alpha")->session_id, "alpha");
  EXPECT_EQ(store_->GetSession(" gamma.1_x-y")->session_id, "gamma.1_x-y");
  std::vector<SessionInfo> t1 = store_->ListSessions("t1");
  ASSERT_EQ(t1.size(), 2u);
  EXPECT_EQ(t1[0].session_id, "alpha");
  EXPECT_EQ(t1[1].session_id, "gamma.1_x-y");
  EXPECT_EQ(store_->ListSessions("").size(), 3u);
  EXPECT_EQ(store_->ListSessions("default").size(), 1u);
  EXPECT_EQ(store_->ListSessions("nobody").size(), 0u);

  EXPECT_TRUE(store_->DeleteSession("alpha").ok());
  EXPECT_ERROR(store_->GetSession("alpha").status(), kNotFound, "alpha");
  EXPECT_CODE(store_->DeleteSession("alpha"), kNotFound);
  EXPECT_CODE(store_->GetSession("").status(), kInvalidArgument);
  EXPECT_EQ(store_->Stats().sessions, 2);
  EXPECT_EQ(store_->Stats().pool_used_bytes, 2 * a.bytes);
}

TEST_F(SessionStoreTest, CreateRejectsBadIdsGeometryPolicyAndDuplicates) {
  Create("dup");
  NewSession ns;
  ns.geometry = g_;
  ns.policy = TestPolicy();
  ns.session_id = "dup";
  EXPECT_ERROR(store_->CreateSession(ns).status(), kAlreadyExists, "dup");
  ns.session_id = "   ";
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "session_id is empty");
  ns.session_id = std::string(129, 'a');
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "129 characters");
  ns.session_id = std::string(128, 'a');
  EXPECT_TRUE(store_->CreateSession(ns).ok());
  ns.session_id = "a/b";
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "'/'");
  ns.session_id = "ok";
  ns.tenant = "bad tenant";
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "tenant");
  ns.tenant = "";
  ns.geometry.num_layers = 0;
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "num_layers");
  ns.geometry = g_;
  ns.geometry.layout.head_dim = -3;
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "head_dim");
  ns.geometry = g_;
  ns.policy.window = 6;  // not a multiple of page_tokens
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "policy: window");
  ns.policy = TestPolicy();
  ns.ttl = absl::Seconds(-1);
  EXPECT_ERROR(store_->CreateSession(ns).status(), kInvalidArgument, "ttl");
  EXPECT_EQ(store_->Stats().sessions, 2);
}

TEST_F(SessionStoreTest, SessionsExpireAfterTheirTtlWithoutAccess) {
  Create("short", "", absl::Seconds(10));
  Create("default-ttl");
  clock_.Advance(absl::Seconds(6));
  ASSERT_TRUE(store_->GetSession("short").ok());  // an access: now expires at 16 s
  clock_.Advance(absl::Seconds(9));
  store_->ReapOnce();
  EXPECT_TRUE(store_->GetSession("short").ok());  // expires at 25 s now
  clock_.Advance(absl::Seconds(10));
  store_->ReapOnce();
  EXPECT_CODE(store_->GetSession("short").status(), kNotFound);
  EXPECT_EQ(store_->Stats().expired_sessions, 1);
  EXPECT_TRUE(store_->GetSession("default-ttl").ok());
  clock_.Advance(absl::Hours(1));
  // Lookups treat an expired session as gone before the reaper runs.
  EXPECT_CODE(store_->GetSession("default-ttl").status(), kNotFound);
  EXPECT_EQ(store_->Stats().sessions, 0);
  EXPECT_EQ(store_->Stats().expired_sessions, 2);
  EXPECT_EQ(store_->Stats().pool_used_bytes, 0);
}

TEST_F(SessionStoreTest, LeasesExpireAndLeasedSessionsDoNot) {
  Create("s", "", absl::Seconds(10));
  const LeaseInfo short_lease = store_->AcquireLease("s", absl::Seconds(5), "decoder-1").value();
  EXPECT_EQ(short_lease.session_id, "s");
  EXPECT_EQ(short_lease.holder, "decoder-1");
  EXPECT_EQ(short_lease.expires, clock_.Now() + absl::Seconds(5));
  const LeaseInfo long_lease = store_->AcquireLease("s", absl::Seconds(100), "decoder-2").value();
  EXPECT_EQ(store_->AcquireLease("s", absl::ZeroDuration(), "").value().expires, clock_.Now() + absl::Seconds(30));
  EXPECT_CODE(store_->AcquireLease("s", absl::Seconds(-1), "").status(), kInvalidArgument);
  EXPECT_CODE(store_->AcquireLease("nope", absl::Seconds(1), "").status(), kNotFound);
  clock_.Advance(absl::Seconds(6));
  store_->ReapOnce();
  EXPECT_EQ(store_->Stats().leases, 2);
  EXPECT_EQ(store_->Stats().expired_leases, 1);
  EXPECT_CODE(store_->RenewLease(short_lease.lease_id, absl::Seconds(5)).status(), kNotFound);
  EXPECT_CODE(store_->ReleaseLease(short_lease.lease_id), kNotFound);
  // Far past the session's TTL: the leases keep it.
  clock_.Advance(absl::Seconds(25));
  store_->ReapOnce();
  EXPECT_EQ(store_->Stats().sessions, 1);
  EXPECT_EQ(store_->Stats().leases, 1);  // the default-TTL lease expired too
  const LeaseInfo renewed = store_->RenewLease(long_lease.lease_id, absl::Seconds(50)).value();
  EXPECT_EQ(renewed.expires, clock_.Now() + absl::Seconds(50));
  ASSERT_TRUE(store_->ReleaseLease(long_lease.lease_id).ok());
  EXPECT_EQ(store_->Stats().leases, 0);
  clock_.Advance(absl::Seconds(11));  // the renewal was the last access
  store_->ReapOnce();
  EXPECT_EQ(store_->Stats().sessions, 0);
}

TEST_F(SessionStoreTest, ThousandAcquireReleaseLeaveNoLease) {
  Create("s");
  for (int i = 0; i < 1000; ++i) {
    const LeaseInfo l = store_->AcquireLease("s", absl::Seconds(5), "x").value();
    ASSERT_TRUE(store_->ReleaseLease(l.lease_id).ok());
  }
  EXPECT_EQ(store_->Stats().leases, 0);
}

TEST_F(SessionStoreTest, DeletingALeasedSessionDefersTheFreeUntilTheLastLeaseGoes) {
  Create("s");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 23)).ok());
  const int64_t used = store_->Stats().pool_used_bytes;
  const LeaseInfo l1 = store_->AcquireLease("s", absl::Seconds(60), "a").value();
  const LeaseInfo l2 = store_->AcquireLease("s", absl::Seconds(5), "b").value();
  const SessionIndex index = store_->GetIndex("s", {}, false).value();
  std::unique_ptr<RecallReader> reader = store_->StartRecall("s", l1.lease_id, 0, AllBlocks(index)).value();
  const std::string expected = RecallAll("s", l1.lease_id, 0, AllBlocks(index));

  ASSERT_TRUE(store_->DeleteSession("s").ok());
  EXPECT_CODE(store_->GetSession("s").status(), kNotFound);
  EXPECT_CODE(store_->StartRecall("s", l1.lease_id, 0, AllBlocks(index)).status(), kNotFound);
  EXPECT_CODE(store_->RenewLease(l1.lease_id, absl::Seconds(1)).status(), kNotFound);
  EXPECT_EQ(store_->Stats().sessions, 0);
  EXPECT_EQ(store_->Stats().pool_used_bytes, used);
  // A new session may be created under the same id meanwhile; it does not touch the old pages.
  Create("s");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 9, /*seed=*/99)).ok());
  ASSERT_TRUE(store_->DeleteSession("s").ok());

  clock_.Advance(absl::Seconds(6));
  store_->ReapOnce();  // l2 expires; l1 still pins
  EXPECT_EQ(store_->Stats().pool_used_bytes, used);
  ASSERT_TRUE(store_->ReleaseLease(l1.lease_id).ok());
  // The reader started before the delete still reads the pages it was promised.
  EXPECT_EQ(store_->Stats().pool_used_bytes, used);
  std::string got, piece;
  while (!reader->done()) {
    ASSERT_TRUE(reader->Next(100, &piece).ok());
    got += piece;
  }
  EXPECT_TRUE(got == expected);
  reader.reset();
  EXPECT_EQ(store_->Stats().pool_used_bytes, 0);
}

TEST_F(SessionStoreTest, SessionQuotaNamesTenantAndLimit) {
  SessionStore::Options o;
  o.max_sessions_per_tenant = 2;
  Reset(o);
  Create("a", "acme");
  Create("b", "acme");
  NewSession ns;
  ns.tenant = "acme";
  ns.geometry = g_;
  ns.policy = TestPolicy();
  const absl::Status s = store_->CreateSession(ns).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("acme"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_sessions_per_tenant is 2"));
  Create("c", "other");
  ASSERT_TRUE(store_->DeleteSession("a").ok());
  Create("d", "acme");
}

TEST_F(SessionStoreTest, ByteQuotaCountsAppendsAtCommitAndLeavesTheSessionUnchanged) {
  const int64_t page = g_.layout.page_bytes();
  const int64_t heads = g_.num_layers * g_.num_kv_heads;
  SessionStore::Options o;
  o.max_bytes_per_tenant = heads * 6 * page;  // sink page + 5 positional pages per head
  Reset(o);
  Create("s", "acme");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 16)).ok());  // sink + 4 pages
  const Snapshot before = Snap("s");
  EXPECT_EQ(before.info.bytes, heads * 5 * page);
  // 5 more tokens need 2 more pages per head: over the limit at commit.
  absl::StatusOr<AppendTicket> t = store_->BeginAppend("s", 20, 5, absl::ZeroDuration());
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(Stage(t->append_id, MakeRows(g_, 20, 5), {}).ok());
  const absl::Status s = store_->CommitAppend(t->append_id).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("acme"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_bytes_per_tenant " + std::to_string(heads * 6 * page)));
  ASSERT_TRUE(store_->AbortAppend(t->append_id).ok());
  ExpectUnchanged(before, "s");
  // An append that obviously cannot fit is refused at BeginAppend.
  EXPECT_ERROR(store_->BeginAppend("s", 20, 1000, absl::ZeroDuration()).status(), kResourceExhausted,
               "max_bytes_per_tenant");
  // 4 tokens need one page per head: fits exactly.
  ASSERT_TRUE(Append("s", MakeRows(g_, 20, 4)).ok());
  EXPECT_EQ(store_->GetSession("s")->bytes, heads * 6 * page);
  // Deleting gives the bytes back.
  ASSERT_TRUE(store_->DeleteSession("s").ok());
  Create("t", "acme");
  ASSERT_TRUE(Append("t", MakeRows(g_, 0, 24)).ok());
}

TEST_F(SessionStoreTest, PoolFullAtCommitIsResourceExhaustedAndRolledBack) {
  const size_t page = g_.layout.page_bytes();
  const int heads = g_.num_layers * g_.num_kv_heads;
  SessionStore::Options o;
  o.pool_bytes = heads * 8 * page;
  Reset(o);
  Create("s");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 13)).ok());  // sink + 4 pages (last partial)
  const Snapshot before = Snap("s");
  // 16 more tokens need 4 more pages per head (3 fit).
  absl::StatusOr<AppendTicket> t = store_->BeginAppend("s", 17, 16, absl::ZeroDuration());
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(Stage(t->append_id, MakeRows(g_, 17, 16), {}).ok());
  EXPECT_ERROR(store_->CommitAppend(t->append_id).status(), kResourceExhausted, "KV pool full");
  ExpectUnchanged(before, "s");
  // The append stays open; abort it and append what fits.
  EXPECT_TRUE(store_->GetSession("s")->append_open);
  ASSERT_TRUE(store_->AbortAppend(t->append_id).ok());
  ASSERT_TRUE(Append("s", MakeRows(g_, 17, 12)).ok());
  EXPECT_EQ(store_->Stats().pool_used_bytes, int64_t(heads * 8 * page));
}

TEST_F(SessionStoreTest, PoolTooSmallForTheClusteringRunsLeavesTheSessionUnchanged) {
  // Build locally to know what the pages and runs need.
  auto local = SequenceKv::Create(g_, LocalPool()).value();
  ASSERT_TRUE(AppendRows(local.get(), MakeRows(g_, 0, 4 + 10)).ok());
  const size_t bytes_before = local->pool_bytes();
  const Rows rows = MakeRows(g_, 14, 12);
  ASSERT_TRUE(AppendRows(local.get(), rows).ok());
  const size_t bytes_rows = local->pool_bytes();
  const Maintenance m = PlanClusterings(*local, {1, 2}, 5, 3);
  size_t run_bytes = 0;
  for (const HeadClustering& c : m.clusterings) {
    for (const ClusterSpec& spec : c.clusters) run_bytes += g_.layout.PagesFor(spec.positions.size()) * g_.layout.page_bytes();
  }
  for (bool enough : {false, true}) {
    SCOPED_TRACE(enough ? "enough room" : "one page short");
    SessionStore::Options o;
    o.pool_bytes = bytes_rows + run_bytes - (enough ? 0 : g_.layout.page_bytes());
    Reset(o);
    Create("s");
    ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 10)).ok());
    ASSERT_EQ(store_->GetSession("s")->bytes, int64_t(bytes_before));
    const Snapshot before = Snap("s");
    absl::StatusOr<SessionInfo> r = Append("s", rows, m);
    if (!enough) {
      EXPECT_ERROR(r.status(), kResourceExhausted, "KV pool full");
      ExpectUnchanged(before, "s");
    } else {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->num_tokens, 26);
      EXPECT_EQ(r->version, 2);
    }
  }
}

TEST_F(SessionStoreTest, SecondAppenderIsAbortedAndExpectedTokensAreChecked) {
  Create("s");
  absl::StatusOr<AppendTicket> first = store_->BeginAppend("s", 0, 5, absl::ZeroDuration());
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(store_->GetSession("s")->append_open);
  EXPECT_ERROR(store_->BeginAppend("s", 0, 5, absl::ZeroDuration()).status(), kAborted, first->append_id);
  ASSERT_TRUE(store_->AbortAppend(first->append_id).ok());
  EXPECT_CODE(store_->AbortAppend(first->append_id), kNotFound);
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 5)).ok());
  EXPECT_ERROR(store_->BeginAppend("s", 0, 5, absl::ZeroDuration()).status(), kAborted, "expected 0");
  EXPECT_ERROR(store_->BeginAppend("s", 6, 5, absl::ZeroDuration()).status(), kAborted, "has 5 tokens");
  EXPECT_CODE(store_->BeginAppend("s", 5, -1, absl::ZeroDuration()).status(), kInvalidArgument);
  EXPECT_CODE(store_->BeginAppend("s", 5, 1, absl::Seconds(-1)).status(), kInvalidArgument);
  EXPECT_CODE(store_->BeginAppend("s", 5, int64_t{1} << 31, absl::ZeroDuration()).status(), kInvalidArgument);
  EXPECT_CODE(store_->BeginAppend("nope", 0, 1, absl::ZeroDuration()).status(), kNotFound);
}

TEST_F(SessionStoreTest, ConcurrentBeginAppendAdmitsExactlyOne) {
  Create("s");
  std::atomic<int> admitted{0}, aborted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<AppendTicket> t = store_->BeginAppend("s", 0, 4, absl::ZeroDuration());
      if (t.ok()) ++admitted;
      if (t.status().code() == absl::StatusCode::kAborted) ++aborted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 1);
  EXPECT_EQ(aborted.load(), 15);
  EXPECT_EQ(store_->Stats().open_appends, 1);
}

TEST_F(SessionStoreTest, StagingRejectsMalformedPiecesNamingTheField) {
  Create("s");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 8)).ok());
  const std::string id = store_->BeginAppend("s", 12, 6, absl::ZeroDuration()).value().append_id;
  const Rows rows = MakeRows(g_, 12, 6);
  const size_t rb = g_.num_kv_heads * g_.layout.row_bytes();
  auto stage = [&](int32_t layer, int64_t offset, int64_t n, size_t kbytes, size_t vbytes) {
    return store_->StageRows(id, layer, offset, n, std::string(kbytes, 'k'), std::string(vbytes, 'v')).status();
  };
  EXPECT_ERROR(stage(3, 0, 2, 2 * rb, 2 * rb), kInvalidArgument, "rows.layer");
  EXPECT_ERROR(stage(-1, 0, 2, 2 * rb, 2 * rb), kInvalidArgument, "rows.layer");
  EXPECT_ERROR(stage(0, 0, 2, 2 * rb - 1, 2 * rb), kInvalidArgument, "rows.keys");
  EXPECT_ERROR(stage(0, 0, 2, 2 * rb, 2 * rb + 2), kInvalidArgument, "rows.values");
  EXPECT_ERROR(stage(0, 0, 0, 0, 0), kInvalidArgument, "rows.rows");
  EXPECT_ERROR(stage(0, 1, 2, 2 * rb, 2 * rb), kInvalidArgument, "rows.row_offset");
  EXPECT_ERROR(stage(0, 0, 7, 7 * rb, 7 * rb), kInvalidArgument, "rows.rows");
  EXPECT_EQ(store_->StageRows(id, 0, 0, 4, rows.keys[0].substr(0, 4 * rb), rows.values[0].substr(0, 4 * rb)).value(), 4);
  EXPECT_ERROR(stage(0, 0, 2, 2 * rb, 2 * rb), kInvalidArgument, "expects row 4 next, saw 0");
  EXPECT_ERROR(stage(0, 4, 3, 3 * rb, 3 * rb), kInvalidArgument, "would have 7 rows");
  EXPECT_ERROR(store_->StageRows("append-nope", 0, 0, 1, "", "").status(), kNotFound, "append-nope");

  // Clusterings are checked against the pages after the append: 2 + 2 pages, the last holding 2 tokens.
  auto future = SequenceKv::Create(g_, LocalPool()).value();
  ASSERT_TRUE(AppendRows(future.get(), MakeRows(g_, 0, 18)).ok());
  const Maintenance good = PlanClusterings(*future, {2}, 4, 2);
  HeadClustering c = good.clusterings[0];
  c.clusters[0].positions[0] = 3;  // a sink position
  EXPECT_ERROR(store_->StageClustering(id, c).status(), kInvalidArgument, "clusters[0].positions");
  c = good.clusterings[0];
  c.clusters[1].positions.push_back(18);  // past the append
  EXPECT_ERROR(store_->StageClustering(id, c).status(), kInvalidArgument, "lists position 18");
  c = good.clusterings[0];
  c.clusters[0].centroid.resize(7);
  EXPECT_ERROR(store_->StageClustering(id, c).status(), kInvalidArgument, "clusters[0].centroid");
  c = good.clusterings[0];
  c.num_pages = 5;
  EXPECT_ERROR(store_->StageClustering(id, c).status(), kInvalidArgument, "clustering.num_pages");
  c = good.clusterings[0];
  c.layer = 9;
  EXPECT_ERROR(store_->StageClustering(id, c).status(), kInvalidArgument, "outside the session's geometry");
  ASSERT_TRUE(store_->StageClustering(id, good.clusterings[0]).ok());
  EXPECT_ERROR(store_->StageClustering(id, good.clusterings[0]).status(), kInvalidArgument, "twice");
  const Maintenance other = PlanClusterings(*future, {2}, 3, 2);
  EXPECT_ERROR(store_->StageClustering(id, other.clusterings[1]).status(), kInvalidArgument, "clustered alike");
  EXPECT_ERROR(store_->StageDropPages(id, 0).status(), kInvalidArgument, "drop_pages");
}

TEST_F(SessionStoreTest, CommitNeedsEveryRowAndEveryHeadOfAClusteredLayer) {
  Create("s");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 8)).ok());
  const Snapshot before = Snap("s");
  const std::string id = store_->BeginAppend("s", 12, 6, absl::ZeroDuration()).value().append_id;
  const Rows rows = MakeRows(g_, 12, 6);
  const size_t rb = g_.num_kv_heads * g_.layout.row_bytes();
  for (int32_t l = 0; l < 2; ++l) ASSERT_TRUE(store_->StageRows(id, l, 0, 6, rows.keys[l], rows.values[l]).ok());
  ASSERT_TRUE(store_->StageRows(id, 2, 0, 5, rows.keys[2].substr(0, 5 * rb), rows.values[2].substr(0, 5 * rb)).ok());
  EXPECT_ERROR(store_->CommitAppend(id).status(), kFailedPrecondition, "layer 2 has 5 of 6 rows");
  ExpectUnchanged(before, "s");
  ASSERT_TRUE(store_->StageRows(id, 2, 5, 1, rows.keys[2].substr(5 * rb), rows.values[2].substr(5 * rb)).ok());
  auto future = SequenceKv::Create(g_, LocalPool()).value();
  ASSERT_TRUE(AppendRows(future.get(), MakeRows(g_, 0, 18)).ok());
  const Maintenance m = PlanClusterings(*future, {1}, 3, 2);
  ASSERT_TRUE(store_->StageClustering(id, m.clusterings[0]).ok());
  EXPECT_ERROR(store_->CommitAppend(id).status(), kInvalidArgument, "head 1 is missing");
  ExpectUnchanged(before, "s");
  ASSERT_TRUE(store_->StageClustering(id, m.clusterings[1]).ok());
  const SessionInfo after = store_->CommitAppend(id).value();
  EXPECT_EQ(after.num_tokens, 18);
  EXPECT_EQ(after.version, 2);
  EXPECT_FALSE(after.append_open);
  EXPECT_CODE(store_->CommitAppend(id).status(), kNotFound);
  EXPECT_EQ(store_->GetIndex("s", {1}, false)->heads[0].cluster_sizes.size(), 2u);
}

TEST_F(SessionStoreTest, AbortAndDeadlineLeaveTheSessionByteForByteUnchanged) {
  Create("s");
  auto local = SequenceKv::Create(g_, LocalPool()).value();
  const Rows first = MakeRows(g_, 0, 4 + 9);
  ASSERT_TRUE(AppendRows(local.get(), first).ok());
  ASSERT_TRUE(Append("s", first).ok());
  const Snapshot before = Snap("s");
  const Rows more = MakeRows(g_, 13, 11);
  ASSERT_TRUE(AppendRows(local.get(), more).ok());
  const Maintenance m = PlanClusterings(*local, {0, 1, 2}, 3, 2);

  // Explicit abort.
  const std::string a1 = store_->BeginAppend("s", 13, 11, absl::ZeroDuration()).value().append_id;
  ASSERT_TRUE(Stage(a1, more, m).ok());
  ASSERT_TRUE(store_->AbortAppend(a1).ok());
  ExpectUnchanged(before, "s");
  EXPECT_CODE(store_->CommitAppend(a1).status(), kNotFound);

  // Deadline passed, reaped.
  const AppendTicket a2 = store_->BeginAppend("s", 13, 11, absl::Seconds(2)).value();
  EXPECT_EQ(a2.deadline, clock_.Now() + absl::Seconds(2));
  ASSERT_TRUE(Stage(a2.append_id, more, m).ok());
  clock_.Advance(absl::Seconds(3));
  store_->ReapOnce();
  ExpectUnchanged(before, "s");
  EXPECT_CODE(store_->CommitAppend(a2.append_id).status(), kNotFound);
  EXPECT_FALSE(store_->GetSession("s")->append_open);

  // Deadline passed, not yet reaped: the commit refuses.
  const std::string a3 = store_->BeginAppend("s", 13, 11, absl::Seconds(2)).value().append_id;
  ASSERT_TRUE(Stage(a3, more, m).ok());
  clock_.Advance(absl::Seconds(3));
  EXPECT_CODE(store_->CommitAppend(a3).status(), kDeadlineExceeded);
  ExpectUnchanged(before, "s");

  // Deadline passed on a stage call, and an expired append does not block the next writer.
  const std::string a4 = store_->BeginAppend("s", 13, 11, absl::Seconds(2)).value().append_id;
  clock_.Advance(absl::Seconds(3));
  EXPECT_CODE(store_->StageDropPages(a4, 1).status(), kDeadlineExceeded);
  const std::string a5 = store_->BeginAppend("s", 13, 11, absl::Seconds(2)).value().append_id;
  clock_.Advance(absl::Seconds(3));
  EXPECT_TRUE(store_->BeginAppend("s", 13, 11, absl::ZeroDuration()).ok());  // a5 was stale
  ExpectUnchanged(before, "s");
  EXPECT_EQ(store_->Stats().aborted_appends, 5);

  // Deleting the session aborts its append.
  ASSERT_TRUE(store_->DeleteSession("s").ok());
  EXPECT_EQ(store_->Stats().aborted_appends, 6);
  EXPECT_EQ(store_->Stats().open_appends, 0);
  (void)a5;
}

TEST_F(SessionStoreTest, CommittedAppendsMatchALocalSequenceBuiltTheSameWay) {
  for (DType dtype : {DType::kBF16, DType::kF32, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    g_.layout.dtype = dtype;
    g_.layout.page_tokens = 5;  // odd, so pages and sink straddle
    g_.sink_tokens = 3;
    Reset(SessionStore::Options{});
    NewSession ns;
    ns.session_id = "s";
    ns.geometry = g_;
    ns.policy = TestPolicy();
    ns.policy.window = 10;
    ns.policy.cluster_window = 10;
    ASSERT_TRUE(store_->CreateSession(ns).ok());
    auto local = SequenceKv::Create(g_, LocalPool()).value();
    // Three appends: plain; with clusterings of the pages it completes; with another clustering and a drop.
    const Rows r1 = MakeRows(g_, 0, 17);
    ASSERT_TRUE(AppendRows(local.get(), r1).ok());
    ASSERT_TRUE(Append("s", r1).ok());
    const Rows r2 = MakeRows(g_, 17, 14);
    ASSERT_TRUE(AppendRows(local.get(), r2).ok());
    const Maintenance m2 = PlanClusterings(*local, {1, 2}, 4, 3);
    ASSERT_TRUE(ApplyMaintenance(local.get(), m2).ok());
    ASSERT_TRUE(Append("s", r2, m2).ok());
    const Rows r3 = MakeRows(g_, 31, 11);
    ASSERT_TRUE(AppendRows(local.get(), r3).ok());
    Maintenance m3 = PlanClusterings(*local, {2}, 2, 2);
    m3.drop_pages = 1;
    ASSERT_TRUE(ApplyMaintenance(local.get(), m3).ok());
    const SessionInfo info = Append("s", r3, m3).value();
    EXPECT_EQ(info.num_tokens, 42);
    EXPECT_EQ(info.version, 3);
    EXPECT_EQ(info.bytes, int64_t(local->pool_bytes()));

    const SessionIndex index = store_->GetIndex("s", {}, true).value();
    EXPECT_EQ(index.version, 3);
    ExpectIndexMatches(index, *local);
    const LeaseInfo lease = store_->AcquireLease("s", absl::ZeroDuration(), "t").value();
    const std::vector<BlockList> blocks = AllBlocks(*local);
    const std::string got = RecallAll("s", lease.lease_id, 3, blocks);
    const std::string want = ExpectedRecall(*local, blocks);
    EXPECT_EQ(got.size(), want.size());
    EXPECT_TRUE(got == want);
    // A subset, out of order, in odd pieces.
    std::vector<BlockList> some = {{2, 1, {{BlockRef::Kind::kCluster, 2, 0}, {BlockRef::Kind::kSink, 0, 0}}},
                                   {0, 0, {{BlockRef::Kind::kPage, 0, index.heads[0].page_first_positions.back()}}}};
    EXPECT_TRUE(RecallAll("s", lease.lease_id, 0, some, 13) == ExpectedRecall(*local, some));
    // GetIndex of some layers, without positions.
    const SessionIndex partial = store_->GetIndex("s", {2, 0}, false).value();
    ASSERT_EQ(partial.heads.size(), 4u);
    EXPECT_EQ(partial.heads[0].layer, 2);
    EXPECT_EQ(partial.heads[2].layer, 0);
    EXPECT_TRUE(partial.heads[0].cluster_positions.empty());
    EXPECT_EQ(partial.heads[0].cluster_sizes, local->head(2, 0).cluster_sizes());
    EXPECT_CODE(store_->GetIndex("s", {3}, false).status(), kInvalidArgument);
    EXPECT_CODE(store_->GetIndex("s", {1, 1}, false).status(), kInvalidArgument);
  }
}

TEST_F(SessionStoreTest, RecallChecksLeaseBlocksAndVersion) {
  Create("s");
  Create("other");
  ASSERT_TRUE(Append("s", MakeRows(g_, 0, 4 + 12)).ok());  // version 1: pages at 4, 8, 12
  const LeaseInfo lease = store_->AcquireLease("s", absl::ZeroDuration(), "").value();
  const LeaseInfo other = store_->AcquireLease("other", absl::ZeroDuration(), "").value();
  const std::vector<BlockList> page4 = {{0, 0, {{BlockRef::Kind::kPage, 0, 4}}}};
  EXPECT_ERROR(store_->StartRecall("s", "", 1, page4).status(), kInvalidArgument, "lease_id");
  EXPECT_CODE(store_->StartRecall("s", "lease-nope", 1, page4).status(), kNotFound);
  EXPECT_ERROR(store_->StartRecall("s", other.lease_id, 1, page4).status(), kFailedPrecondition, "other");
  EXPECT_CODE(store_->StartRecall("nope", lease.lease_id, 1, page4).status(), kNotFound);
  EXPECT_ERROR(store_->StartRecall("s", lease.lease_id, 1, {{0, 0, {{BlockRef::Kind::kCluster, 0, 0}}}}).status(),
               kInvalidArgument, "no cluster 0");
  EXPECT_ERROR(store_->StartRecall("s", lease.lease_id, 1, {{0, 2, {}}}).status(), kInvalidArgument,
               "outside the session's geometry");
  EXPECT_CODE(store_->StartRecall("s", lease.lease_id, -1, page4).status(), kInvalidArgument);
  std::unique_ptr<RecallReader> pending = store_->StartRecall("s", lease.lease_id, 1, page4).value();
  EXPECT_EQ(pending->total_bytes(), int64_t(g_.layout.page_bytes()));

  // Version 2 clusters pages 4 and 8 of every layer.
  auto local = SequenceKv::Create(g_, LocalPool()).value();
  ASSERT_TRUE(AppendRows(local.get(), MakeRows(g_, 0, 16)).ok());
  ASSERT_TRUE(AppendRows(local.get(), MakeRows(g_, 16, 2)).ok());
  const Maintenance m = PlanClusterings(*local, {0, 1, 2}, 2, 2);
  ASSERT_TRUE(Append("s", MakeRows(g_, 16, 2), m).ok());
  EXPECT_ERROR(store_->StartRecall("s", lease.lease_id, 1, page4).status(), kAborted, "reload the index");
  EXPECT_ERROR(store_->StartRecall("s", lease.lease_id, 2, page4).status(), kInvalidArgument, "at version 2");
  EXPECT_ERROR(store_->StartRecall("s", lease.lease_id, 0, page4).status(), kNotFound, "no page at position 4");
  // A page that still exists is served whatever the version; the recall begun before the change is ABORTED.
  EXPECT_EQ(RecallAll("s", lease.lease_id, 1, {{0, 0, {{BlockRef::Kind::kPage, 0, 12}}}}).size(),
            g_.layout.page_bytes());
  std::string piece;
  EXPECT_CODE(pending->Next(100, &piece), kAborted);
  EXPECT_EQ(store_->Stats().recall_bytes, int64_t(g_.layout.page_bytes()));
}

TEST_F(SessionStoreTest, ReaperThreadRemovesExpiredSessions) {
  Create("s", "", absl::Seconds(1));
  store_->StartReaper(absl::Milliseconds(5));
  clock_.Advance(absl::Seconds(2));
  for (int i = 0; i < 1000 && store_->Stats().sessions > 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(store_->Stats().sessions, 0);
  store_->StopReaper();
}

// Many writers committing clusterings into one tight pool, while others delete: every commit either applies
// whole or leaves its session as it was; none fails half way (no INTERNAL).
TEST_F(SessionStoreTest, ConcurrentCommitsIntoATightPoolAreAllOrNothing) {
  SessionStore::Options o;
  o.pool_bytes = 160 * g_.layout.page_bytes();
  Reset(o);
  constexpr int kWriters = 6;
  std::atomic<int> internal{0}, exhausted{0}, committed{0}, mismatched{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      HostAllocator host;
      auto pool = PagePool::Create(&host, {g_.layout.page_bytes(), size_t{4} << 20}).value();
      for (int round = 0; round < 20; ++round) {
        const std::string id = absl::StrCat("w", w, "-", round);
        NewSession ns;
        ns.session_id = id;
        ns.geometry = g_;
        ns.policy = TestPolicy();
        absl::Status created;
        for (int tries = 0; tries < 10000; ++tries) {  // the pool may be full of the other writers' sessions
          created = store_->CreateSession(ns).status();
          if (created.code() != absl::StatusCode::kResourceExhausted) break;
          absl::SleepFor(absl::Microseconds(100));
        }
        ASSERT_TRUE(created.ok()) << created;
        auto local = SequenceKv::Create(g_, pool.get()).value();
        for (int step = 0; step < 4; ++step) {
          const int64_t n = 7 + step;
          const Rows rows = MakeRows(g_, local->num_tokens(), n, w * 100 + round);
          ASSERT_TRUE(AppendRows(local.get(), rows).ok());
          Maintenance m;
          if (local->head(1, 0).num_pages() >= 3) m = PlanClusterings(*local, {1, 2}, 2, 2);
          const SessionInfo before = store_->GetSession(id).value();
          absl::StatusOr<SessionInfo> r = Append(id, rows, m);
          if (r.ok()) {
            ++committed;
            ASSERT_TRUE(ApplyMaintenance(local.get(), m).ok());
            if (r->num_tokens != local->num_tokens() || r->version != before.version + 1) ++mismatched;
          } else {
            if (r.status().code() == absl::StatusCode::kInternal) ++internal;
            ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
            ++exhausted;
            const SessionInfo after = store_->GetSession(id).value();
            if (after.num_tokens != before.num_tokens || after.version != before.version ||
                after.bytes != before.bytes) {
              ++mismatched;
            }
            break;  // local has rows the session lacks; start a new session
          }
        }
        ASSERT_TRUE(store_->DeleteSession(id).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(internal.load(), 0);
  EXPECT_EQ(mismatched.load(), 0);
  EXPECT_GT(committed.load(), 0);
  EXPECT_EQ(store_->Stats().pool_used_bytes, 0);
  EXPECT_EQ(store_->Stats().open_appends, 0);
  LOG(INFO) << "committed " << committed.load() << ", pool full " << exhausted.load();
}

}  // namespace
}  // namespace livekv
