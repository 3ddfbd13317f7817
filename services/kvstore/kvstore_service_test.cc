// The KV store over gRPC: a real server on 127.0.0.1:0 in-process, the raw stub for malformed requests, and the
// typed client for round trips.
#include "services/kvstore/kvstore_service.h"

#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/allocator.h"
#include "common/clock.h"
#include "common/metrics/metrics.h"
#include "common/rpc/client.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/convert.h"
#include "services/kvstore/kv_test_util.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;
using testing_util::AppendRows;
using testing_util::MakeRows;
using testing_util::PlanClusterings;
using testing_util::Rows;

// Keeps gRPC initialised for the whole run. Otherwise the last gRPC object of a test (its server or channel) runs
// grpc_shutdown, which after tests that moved large messages waits ~10 s for gRPC's internals to wind down.
class GrpcEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { grpc_init(); }
};
::testing::Environment* const grpc_environment = ::testing::AddGlobalTestEnvironment(new GrpcEnvironment);

#define EXPECT_ERROR(expr, code_, text)                                      \
  do {                                                                       \
    const absl::Status s_ = (expr);                                          \
    EXPECT_EQ(s_.code(), absl::StatusCode::code_) << #expr << ": " << s_;    \
    EXPECT_THAT(std::string(s_.message()), HasSubstr(text)) << #expr;        \
  } while (0)

v1::CreateSessionRequest SmallSession(const std::string& id) {
  v1::CreateSessionRequest r;
  r.set_session_id(id);
  r.set_model("tiny");
  v1::KvGeometry* g = r.mutable_geometry();
  g->set_num_layers(3);
  g->set_num_kv_heads(2);
  g->set_head_dim(8);
  g->set_page_tokens(4);
  g->set_dtype(v1::DTYPE_BF16);
  g->set_sink_tokens(4);
  v1::PolicyConfig* p = r.mutable_policy();
  p->set_window(8);
  p->set_cluster_window(8);
  p->set_window_clusters(2);
  p->set_budget(64);
  return r;
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

class KvStoreServiceTest : public ::testing::Test {
 protected:
  void Start(SessionStore::Options options = {}, KvStoreService::Options service_options = {}) {
    server_.reset();
    if (options.pool_bytes == size_t{4} << 30) options.pool_bytes = size_t{256} << 20;
    store_ = std::make_unique<SessionStore>(options, &clock_, &host_);
    metrics_ = std::make_unique<ServiceMetrics>("kvstore");
    service_ = std::make_unique<KvStoreService>(store_.get(), metrics_.get(), service_options);
    server_ = std::make_unique<GrpcServer>();
    ASSERT_TRUE(server_->Start("127.0.0.1:0", {service_.get()}).ok());
    channel_ = MakeChannel(server_->address());
    stub_ = v1::KvStore::NewStub(channel_);
    client_ = std::make_unique<KvStoreClient>(channel_, absl::Seconds(20));
  }
  void SetUp() override { Start(); }

  std::unique_ptr<grpc::ClientContext> Ctx(absl::Duration timeout = absl::Seconds(10)) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    SetDeadline(ctx.get(), timeout);
    return ctx;
  }

  // A local pool for sequences of `g` (kept until the test ends).
  PagePool* LocalPool(const KvGeometry& g) {
    pools_.push_back(PagePool::Create(&host_, {g.layout.page_bytes(), size_t{256} << 20}).value());
    return pools_.back().get();
  }

  std::string Begin(const std::string& session, int64_t expected, int64_t n) {
    v1::BeginAppendRequest r;
    r.set_session_id(session);
    r.set_expected_tokens(expected);
    r.set_num_tokens(n);
    v1::BeginAppendResponse resp;
    const grpc::Status s = stub_->BeginAppend(Ctx().get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.append_id();
  }

  // Sends `messages` on one AppendKv stream; the call's status.
  absl::Status SendAppend(const std::vector<v1::AppendKvRequest>& messages) {
    auto ctx = Ctx();
    v1::AppendKvResponse resp;
    auto writer = stub_->AppendKv(ctx.get(), &resp);
    for (const v1::AppendKvRequest& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  absl::Status Commit(const std::string& append_id) {
    v1::CommitAppendRequest r;
    r.set_append_id(append_id);
    v1::CommitAppendResponse resp;
    return FromGrpcStatus(stub_->CommitAppend(Ctx().get(), r, &resp));
  }

  // Every chunk of a Recall.
  absl::Status RecallChunks(const v1::RecallRequest& request, std::vector<v1::RecallChunk>* chunks) {
    auto ctx = Ctx();
    auto reader = stub_->Recall(ctx.get(), request);
    v1::RecallChunk chunk;
    while (reader->Read(&chunk)) chunks->push_back(chunk);
    return FromGrpcStatus(reader->Finish());
  }

  // Appends `rows` and `m` to the local sequence and, through the client, to the session.
  void AppendBoth(const std::string& id, SequenceKv* local, const Rows& rows, const Maintenance& m) {
    const int64_t expected = local->num_tokens();
    if (rows.n > 0) {
      ASSERT_TRUE(AppendRows(local, rows).ok());
    }
    ASSERT_TRUE(ApplyMaintenance(local, m).ok());
    absl::StatusOr<v1::Session> s = client_->Append(id, expected, rows.n, rows.keys, rows.values, m);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->num_tokens(), local->num_tokens());
  }

  FakeClock clock_;
  HostAllocator host_;
  std::vector<std::unique_ptr<PagePool>> pools_;
  std::unique_ptr<SessionStore> store_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<KvStoreService> service_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvStore::Stub> stub_;
  std::unique_ptr<KvStoreClient> client_;
};

TEST_F(KvStoreServiceTest, SessionCallsWithBadInputGetTheRightCodes) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  EXPECT_ERROR(client_->CreateSession(SmallSession("s")).status(), kAlreadyExists, "s");
  EXPECT_ERROR(client_->GetSession("nope").status(), kNotFound, "nope");
  EXPECT_ERROR(client_->DeleteSession("nope"), kNotFound, "nope");
  EXPECT_ERROR(client_->GetSession("").status(), kInvalidArgument, "session_id");

  v1::CreateSessionRequest r = SmallSession("x");
  r.mutable_geometry()->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "geometry.dtype");
  r = SmallSession("x");
  r.mutable_geometry()->set_num_kv_heads(0);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "num_kv_heads");
  r = SmallSession("x");
  r.mutable_geometry()->set_page_tokens(-4);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "page_tokens");
  r = SmallSession("x");
  r.mutable_geometry()->set_head_dim(5000);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "implausibly large");
  r = SmallSession("x");
  r.set_ttl_seconds(-1);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "ttl_seconds");
  r = SmallSession("x");
  r.mutable_policy()->set_kind(static_cast<v1::PolicyKind>(99));
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "policy.kind");
  r = SmallSession("x");
  r.mutable_policy()->set_window(6);
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "policy: window");
  r = SmallSession("bad id");
  EXPECT_ERROR(client_->CreateSession(r).status(), kInvalidArgument, "session_id");

  v1::BeginAppendRequest b;
  b.set_session_id("nope");
  v1::BeginAppendResponse br;
  EXPECT_EQ(stub_->BeginAppend(Ctx().get(), b, &br).error_code(), grpc::StatusCode::NOT_FOUND);
  b.set_session_id("s");
  b.set_timeout_ms(-5);
  EXPECT_EQ(stub_->BeginAppend(Ctx().get(), b, &br).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  b.set_timeout_ms(0);
  b.set_num_tokens(-1);
  EXPECT_EQ(stub_->BeginAppend(Ctx().get(), b, &br).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_ERROR(Commit("append-nope"), kNotFound, "append-nope");
  v1::AbortAppendRequest a;
  a.set_append_id("append-nope");
  v1::AbortAppendResponse ar;
  EXPECT_EQ(stub_->AbortAppend(Ctx().get(), a, &ar).error_code(), grpc::StatusCode::NOT_FOUND);

  EXPECT_ERROR(client_->AcquireLease("nope", absl::Seconds(1), "").status(), kNotFound, "nope");
  EXPECT_ERROR(client_->AcquireLease("s", absl::Milliseconds(-1), "").status(), kInvalidArgument, "ttl_ms");
  EXPECT_ERROR(client_->RenewLease({"lease-nope", "s"}, absl::Seconds(1)), kNotFound, "lease-nope");
  EXPECT_ERROR(client_->ReleaseLease({"lease-nope", "s"}), kNotFound, "lease-nope");

  v1::GetIndexRequest gi;
  gi.set_session_id("nope");
  v1::GetIndexResponse gr;
  EXPECT_EQ(stub_->GetIndex(Ctx().get(), gi, &gr).error_code(), grpc::StatusCode::NOT_FOUND);
  gi.set_session_id("s");
  gi.add_layers(3);
  const grpc::Status layer = stub_->GetIndex(Ctx().get(), gi, &gr);
  EXPECT_EQ(layer.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(layer.error_message(), HasSubstr("layers[0]"));

  v1::RecallRequest rr;
  rr.set_session_id("s");
  std::vector<v1::RecallChunk> chunks;
  EXPECT_ERROR(RecallChunks(rr, &chunks), kInvalidArgument, "lease_id");
  rr.set_lease_id("lease-nope");
  EXPECT_ERROR(RecallChunks(rr, &chunks), kNotFound, "lease-nope");
  const StoreLease lease = client_->AcquireLease("s", absl::Seconds(30), "t").value();
  rr.set_lease_id(lease.lease_id);
  v1::BlockSet* set = rr.add_blocks();
  set->add_pages(4);
  EXPECT_ERROR(RecallChunks(rr, &chunks), kNotFound, "no page at position 4");
  set->clear_pages();
  set->add_clusters(0);
  EXPECT_ERROR(RecallChunks(rr, &chunks), kInvalidArgument, "no cluster 0");
  set->clear_clusters();
  set->set_kv_head(2);
  EXPECT_ERROR(RecallChunks(rr, &chunks), kInvalidArgument, "outside the session's geometry");
  EXPECT_TRUE(chunks.empty());
}

TEST_F(KvStoreServiceTest, AppendKvWithBadMessagesGetsTheRightCodeAndAbortsTheAppend) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  const KvGeometry g = FromProto(SmallSession("s").geometry()).value();
  const Rows rows = MakeRows(g, 0, 10);
  const size_t rb = g.num_kv_heads * g.layout.row_bytes();
  auto rows_message = [&](const std::string& id, int32_t layer, int64_t offset, int32_t n, size_t kbytes) {
    v1::AppendKvRequest m;
    m.set_append_id(id);
    v1::LayerRows* r = m.mutable_rows();
    r->set_layer(layer);
    r->set_row_offset(offset);
    r->set_rows(n);
    r->set_keys(rows.keys[std::min(layer, 2)].substr(0, std::min(kbytes, rows.keys[0].size())));
    if (kbytes > rows.keys[0].size()) r->mutable_keys()->resize(kbytes);
    r->set_values(rows.values[std::min(layer, 2)].substr(0, n * rb));
    return m;
  };
  struct Case {
    std::string what;
    std::function<std::vector<v1::AppendKvRequest>(const std::string&)> messages;
    absl::StatusCode code;
    std::string text;
  };
  auto clustering = [&](const std::string& id, int32_t num_pages) {
    v1::AppendKvRequest m;
    m.set_append_id(id);
    m.mutable_clustering()->set_num_pages(num_pages);
    v1::ClusterUpdate::Cluster* c = m.mutable_clustering()->add_clusters();
    for (int p = 4; p < 8; ++p) c->add_positions(p);
    for (int i = 0; i < 8; ++i) c->add_centroid(0.5f);
    return m;
  };
  const std::vector<Case> cases = {
      {"short keys", [&](const std::string& id) { return std::vector{rows_message(id, 0, 0, 2, 2 * rb - 2)}; },
       absl::StatusCode::kInvalidArgument, "rows.keys"},
      {"layer", [&](const std::string& id) { return std::vector{rows_message(id, 5, 0, 2, 2 * rb)}; },
       absl::StatusCode::kInvalidArgument, "rows.layer"},
      {"order", [&](const std::string& id) { return std::vector{rows_message(id, 0, 3, 2, 2 * rb)}; },
       absl::StatusCode::kInvalidArgument, "rows.row_offset"},
      {"too many rows", [&](const std::string& id) { return std::vector{rows_message(id, 0, 0, 11, 11 * rb)}; },
       absl::StatusCode::kInvalidArgument, "rows.rows"},
      {"page count", [&](const std::string& id) { return std::vector{clustering(id, 9)}; },
       absl::StatusCode::kInvalidArgument, "clustering.num_pages"},
      {"negative page count", [&](const std::string& id) { return std::vector{clustering(id, -1)}; },
       absl::StatusCode::kInvalidArgument, "clustering.num_pages must be >= 0"},
      {"drop", [&](const std::string& id) {
         v1::AppendKvRequest m;
         m.set_append_id(id);
         m.set_drop_pages(-2);
         return std::vector{m};
       }, absl::StatusCode::kInvalidArgument, "drop_pages"},
      {"oversized", [&](const std::string& id) { return std::vector{rows_message(id, 0, 0, 2, 17 << 20)}; },
       absl::StatusCode::kInvalidArgument, "rows: AppendKv message 0 is"},
      {"no payload", [&](const std::string& id) {
         v1::AppendKvRequest m;
         m.set_append_id(id);
         return std::vector{m};
       }, absl::StatusCode::kInvalidArgument, "payload"},
      {"second append id", [&](const std::string& id) {
         return std::vector{rows_message(id, 0, 0, 2, 2 * rb), rows_message("append-other", 0, 2, 2, 2 * rb)};
       }, absl::StatusCode::kInvalidArgument, "append_id: message 1"},
  };
  int64_t aborted = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string id = Begin("s", 0, 10);
    const absl::Status s = SendAppend(c.messages(id));
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.text));
    // The append is gone: the next writer may begin.
    EXPECT_ERROR(Commit(id), kNotFound, id);
    EXPECT_EQ(store_->Stats().aborted_appends, ++aborted);
  }
  v1::AppendKvRequest no_id = rows_message("", 0, 0, 2, 2 * rb);
  EXPECT_ERROR(SendAppend({no_id}), kInvalidArgument, "append_id is required");
  EXPECT_ERROR(SendAppend({rows_message("append-nope", 0, 0, 2, 2 * rb)}), kNotFound, "append-nope");
  const v1::Session s = client_->GetSession("s").value();
  EXPECT_EQ(s.num_tokens(), 0);
  EXPECT_EQ(s.version(), 0);
  EXPECT_FALSE(s.append_open());
}

TEST_F(KvStoreServiceTest, QuotasAreResourceExhausted) {
  SessionStore::Options o;
  o.max_sessions_per_tenant = 1;
  Start(o);
  v1::CreateSessionRequest r = SmallSession("a");
  r.set_tenant("acme");
  ASSERT_TRUE(client_->CreateSession(r).ok());
  r.set_session_id("b");
  EXPECT_ERROR(client_->CreateSession(r).status(), kResourceExhausted, "max_sessions_per_tenant is 1");
  r.set_tenant("other");
  EXPECT_TRUE(client_->CreateSession(r).ok());
}

TEST_F(KvStoreServiceTest, AWriterWhoseStreamBreaksLeavesTheSessionUnchanged) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  const KvGeometry g = FromProto(SmallSession("s").geometry()).value();
  auto local = SequenceKv::Create(g, LocalPool(g)).value();
  AppendBoth("s", local.get(), MakeRows(g, 0, 13), {});
  const v1::Session before = client_->GetSession("s").value();
  v1::GetIndexRequest gi;
  gi.set_session_id("s");
  gi.set_with_positions(true);
  v1::GetIndexResponse index_before;
  ASSERT_TRUE(stub_->GetIndex(Ctx().get(), gi, &index_before).ok());

  const Rows rows = MakeRows(g, 13, 8);
  for (const bool by_deadline : {false, true}) {
    SCOPED_TRACE(by_deadline ? "deadline" : "cancel");
    const int64_t aborted = store_->Stats().aborted_appends;
    const std::string id = Begin("s", 13, 8);
    auto ctx = Ctx(by_deadline ? absl::Milliseconds(300) : absl::Seconds(10));
    v1::AppendKvResponse resp;
    auto writer = stub_->AppendKv(ctx.get(), &resp);
    v1::AppendKvRequest m;
    m.set_append_id(id);
    m.mutable_rows()->set_layer(0);
    m.mutable_rows()->set_rows(8);
    m.mutable_rows()->set_keys(rows.keys[0]);
    m.mutable_rows()->set_values(rows.values[0]);
    ASSERT_TRUE(writer->Write(m));
    absl::SleepFor(absl::Milliseconds(100));
    if (by_deadline) {
      absl::SleepFor(absl::Milliseconds(400));
    } else {
      ctx->TryCancel();
    }
    const grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), by_deadline ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED);
    for (int i = 0; i < 500 && store_->Stats().open_appends > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
    EXPECT_EQ(store_->Stats().open_appends, 0);
    EXPECT_EQ(store_->Stats().aborted_appends, aborted + 1);
    EXPECT_ERROR(Commit(id), kNotFound, id);
  }
  const v1::Session after = client_->GetSession("s").value();
  EXPECT_EQ(after.num_tokens(), before.num_tokens());
  EXPECT_EQ(after.version(), before.version());
  EXPECT_EQ(after.bytes(), before.bytes());
  v1::GetIndexResponse index_after;
  ASSERT_TRUE(stub_->GetIndex(Ctx().get(), gi, &index_after).ok());
  EXPECT_EQ(index_after.SerializeAsString(), index_before.SerializeAsString());
  auto mirror = client_->LoadMirror("s", client_->AcquireLease("s", absl::Seconds(30), "t").value(),
                                    LocalPool(g), true);
  ASSERT_TRUE(mirror.ok()) << mirror.status();
  testing_util::ExpectSameSequence(*local, *mirror->kv);
  // The next writer proceeds.
  AppendBoth("s", local.get(), rows, {});
}

TEST_F(KvStoreServiceTest, AnAppendOpenedByItsStreamLivesExactlyAsLongAsTheStream) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  const KvGeometry g = FromProto(SmallSession("s").geometry()).value();
  auto local = SequenceKv::Create(g, LocalPool(g)).value();
  AppendBoth("s", local.get(), MakeRows(g, 0, 13), {});
  const v1::Session before = client_->GetSession("s").value();
  const Rows rows = MakeRows(g, 13, 8);
  auto messages = [&](bool commit) {
    std::vector<v1::AppendKvRequest> out(1);
    out[0].mutable_begin()->set_session_id("s");
    out[0].mutable_begin()->set_expected_tokens(13);
    out[0].mutable_begin()->set_num_tokens(8);
    for (int32_t l = 0; l < g.num_layers; ++l) {
      v1::AppendKvRequest m;
      m.mutable_rows()->set_layer(l);
      m.mutable_rows()->set_rows(8);
      m.mutable_rows()->set_keys(rows.keys[l]);
      m.mutable_rows()->set_values(rows.values[l]);
      out.push_back(m);
    }
    if (commit) {
      out.emplace_back();
      out.back().set_commit(true);
    }
    return out;
  };
  // A writer that stops without committing (a clean half-close, as a crashed writer's library might send)
  // abandons the append at once: nothing is left open and nothing changed.
  const int64_t aborted = store_->Stats().aborted_appends;
  EXPECT_ERROR(SendAppend(messages(false)), kAborted, "without a commit");
  EXPECT_EQ(store_->Stats().open_appends, 0);
  EXPECT_EQ(store_->Stats().aborted_appends, aborted + 1);
  EXPECT_EQ(client_->GetSession("s")->version(), before.version());
  // Messages after the commit are refused, and a begin in the middle of a stream too.
  std::vector<v1::AppendKvRequest> extra = messages(true);
  extra.push_back(extra[1]);
  EXPECT_ERROR(SendAppend(extra), kInvalidArgument, "follows the commit");
  EXPECT_EQ(client_->GetSession("s")->num_tokens(), 21);  // the commit itself happened
  std::vector<v1::AppendKvRequest> twice = messages(false);
  twice[0].mutable_begin()->set_expected_tokens(21);
  twice.insert(twice.begin() + 1, twice[0]);
  EXPECT_ERROR(SendAppend(twice), kInvalidArgument, "only the first AppendKv message");
  EXPECT_EQ(store_->Stats().open_appends, 0);
}

TEST_F(KvStoreServiceTest, RecallStreamsChunksOfAtMost4MiBThatConcatenateToTheBlocks) {
  v1::CreateSessionRequest r;
  r.set_session_id("big");
  v1::KvGeometry* pg = r.mutable_geometry();
  pg->set_num_layers(2);
  pg->set_num_kv_heads(4);
  pg->set_head_dim(128);
  pg->set_page_tokens(32);
  pg->set_dtype(v1::DTYPE_F32);
  pg->set_sink_tokens(32);
  ASSERT_TRUE(client_->CreateSession(r).ok());
  const KvGeometry g = FromProto(*pg).value();
  auto local = SequenceKv::Create(g, LocalPool(g)).value();
  AppendBoth("big", local.get(), MakeRows(g, 0, 32 + 2048 + 7), {});
  const StoreLease lease = client_->AcquireLease("big", absl::Seconds(30), "t").value();
  v1::RecallRequest request;
  request.set_session_id("big");
  request.set_lease_id(lease.lease_id);
  request.set_version(1);
  std::string want;
  for (int32_t l = 0; l < 2; ++l) {
    for (int32_t h = 0; h < 4; ++h) {
      const std::vector<BlockRef> blocks = local->SelectedBlocks(l, h, local->SelectAll(l, h));
      for (v1::BlockSet& set : ToBlockSets(l, h, blocks)) *request.add_blocks() = set;
      for (const BlockRef& b : blocks) {
        want += ZeroPadded(local->BlockBytes(l, h, b).value(), g.layout, testing_util::BlockTokens(*local, l, h, b));
      }
    }
  }
  ASSERT_GT(want.size(), size_t{16} << 20);
  std::vector<v1::RecallChunk> chunks;
  ASSERT_TRUE(RecallChunks(request, &chunks).ok());
  ASSERT_GE(chunks.size(), 5u);
  std::string got;
  for (const v1::RecallChunk& c : chunks) {
    EXPECT_LE(c.data().size(), size_t{4} << 20);
    EXPECT_EQ(c.offset(), static_cast<int64_t>(got.size()));
    EXPECT_EQ(c.total_bytes(), static_cast<int64_t>(want.size()));
    got += c.data();
  }
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);
  EXPECT_EQ(store_->Stats().recall_bytes, static_cast<int64_t>(want.size()));
  // Nothing asked: one empty chunk.
  request.clear_blocks();
  chunks.clear();
  ASSERT_TRUE(RecallChunks(request, &chunks).ok());
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].total_bytes(), 0);
  const std::string metrics = RenderMetrics(metrics_->registry());
  EXPECT_THAT(metrics, HasSubstr("livekv_recall_bytes_total"));
  EXPECT_THAT(metrics, HasSubstr("livekv_recall_seconds_count"));
}

class MirrorTest : public KvStoreServiceTest, public ::testing::WithParamInterface<bool> {};

TEST_P(MirrorTest, LoadMirrorWithBytesReproducesEveryRunOfTheSession) {
  KvStoreService::Options so;
  if (GetParam()) so.max_response_bytes = 1500;  // forces the per-layer index fallback
  Start(SessionStore::Options{}, so);
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  const KvGeometry g = FromProto(SmallSession("s").geometry()).value();
  auto local = SequenceKv::Create(g, LocalPool(g)).value();
  AppendBoth("s", local.get(), MakeRows(g, 0, 4 + 21), {});
  {
    auto next = SequenceKv::Create(g, LocalPool(g)).value();  // plan on the state after the next rows
    ASSERT_TRUE(AppendRows(next.get(), MakeRows(g, 0, 4 + 21)).ok());
    ASSERT_TRUE(AppendRows(next.get(), MakeRows(g, 25, 10)).ok());
    AppendBoth("s", local.get(), MakeRows(g, 25, 10), PlanClusterings(*next, {1, 2}, 5, 3));
  }
  // A maintenance-only commit (a settle point): cluster layer 0 too.
  AppendBoth("s", local.get(), Rows{0, {}, {}}, PlanClusterings(*local, {0}, 3, 2));
  AppendBoth("s", local.get(), MakeRows(g, 35, 6), {});

  const StoreLease lease = client_->AcquireLease("s", absl::Seconds(30), "decode-0").value();
  absl::StatusOr<KvStoreClient::Mirror> mirror = client_->LoadMirror("s", lease, LocalPool(g), true);
  ASSERT_TRUE(mirror.ok()) << mirror.status();
  EXPECT_EQ(mirror->version, 4);
  EXPECT_EQ(mirror->geometry.num_layers, 3);
  testing_util::ExpectSameSequence(*local, *mirror->kv);
  if (GetParam()) {  // the whole index was refused, then read layer by layer
    EXPECT_THAT(RenderMetrics(metrics_->registry()),
                HasSubstr("livekv_requests_total{code=\"8\",method=\"GetIndex\",service=\"kvstore\"} 1"));
  }

  // Without bytes: the same blocks, reserved; recall some into it.
  absl::StatusOr<KvStoreClient::Mirror> lazy = client_->LoadMirror("s", lease, LocalPool(g), false);
  ASSERT_TRUE(lazy.ok()) << lazy.status();
  std::vector<KvStoreClient::BlockRequest> requests;
  requests.push_back({2, 1, {{BlockRef::Kind::kPage, 0, lazy->kv->head(2, 1).page(0).first_position},
                             {BlockRef::Kind::kCluster, 1, 0},
                             {BlockRef::Kind::kSink, 0, 0},
                             {BlockRef::Kind::kCluster, 0, 0}}});
  requests.push_back({0, 0, {{BlockRef::Kind::kCluster, 1, 0}}});
  int64_t bytes = 0;
  ASSERT_TRUE(client_->Recall("s", lease, lazy->version, requests, lazy->kv.get(), &bytes).ok());
  int64_t want_bytes = 0;
  for (const auto& r : requests) {
    for (const BlockRef& b : r.blocks) {
      const int64_t tokens = testing_util::BlockTokens(*local, r.layer, r.kv_head, b);
      auto x = local->BlockBytes(r.layer, r.kv_head, b).value();
      auto y = lazy->kv->BlockBytes(r.layer, r.kv_head, b).value();
      want_bytes += x.size();
      EXPECT_EQ(testing_util::ValidRows(x, g.layout, tokens), testing_util::ValidRows(y, g.layout, tokens));
    }
  }
  EXPECT_EQ(bytes, want_bytes);

  // The session moves on: a recall of a page clustered since is ABORTED; the mirror must be reloaded.
  const int64_t page0 = local->head(2, 1).page(0).first_position;
  const int64_t expected = local->num_tokens();
  ASSERT_TRUE(AppendRows(local.get(), MakeRows(g, 41, 3)).ok());
  const Maintenance m = PlanClusterings(*local, {2}, 1, 2);
  ASSERT_TRUE(ApplyMaintenance(local.get(), m).ok());
  const Rows more = MakeRows(g, 41, 3);
  ASSERT_TRUE(client_->Append("s", expected, 3, more.keys, more.values, m).ok());
  EXPECT_ERROR(client_->Recall("s", lease, lazy->version, {{2, 1, {{BlockRef::Kind::kPage, 0, page0}}}},
                               lazy->kv.get(), nullptr),
               kAborted, "reload the index");
  absl::StatusOr<KvStoreClient::Mirror> reloaded = client_->LoadMirror("s", lease, LocalPool(g), true);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  testing_util::ExpectSameSequence(*local, *reloaded->kv);
}

INSTANTIATE_TEST_SUITE_P(WholeAndPerLayerIndex, MirrorTest, ::testing::Bool());

TEST_F(KvStoreServiceTest, AppendOfAStaleWriterOrAfterTheDeadlineFails) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("s")).ok());
  const KvGeometry g = FromProto(SmallSession("s").geometry()).value();
  const Rows rows = MakeRows(g, 0, 6);
  ASSERT_TRUE(client_->Append("s", 0, 6, rows.keys, rows.values, {}).ok());
  // A writer that built on an old state.
  EXPECT_ERROR(client_->Append("s", 0, 6, rows.keys, rows.values, {}).status(), kAborted, "has 6 tokens");
  // Two writers at once: the second is refused while the first is open.
  const std::string first = Begin("s", 6, 2);
  v1::BeginAppendRequest b;
  b.set_session_id("s");
  b.set_expected_tokens(6);
  b.set_num_tokens(2);
  v1::BeginAppendResponse br;
  EXPECT_EQ(stub_->BeginAppend(Ctx().get(), b, &br).error_code(), grpc::StatusCode::ABORTED);
  // The first misses its deadline.
  clock_.Advance(absl::Seconds(61));
  EXPECT_ERROR(Commit(first), kDeadlineExceeded, first);
  // Mismatched client-side input never reaches the server.
  EXPECT_ERROR(client_->Append("s", 6, 4, {"abc"}, {"abcd"}, {}).status(), kInvalidArgument, "layer 0");
  EXPECT_EQ(store_->Stats().open_appends, 0);
  // A malformed append through the client is aborted, leaving the session as it was.
  const Rows more = MakeRows(g, 6, 4);
  std::vector<std::string> short_keys = more.keys;
  short_keys.pop_back();
  std::vector<std::string> short_values = more.values;
  short_values.pop_back();
  EXPECT_ERROR(client_->Append("s", 6, 4, short_keys, short_values, {}).status(), kFailedPrecondition,
               "layer 2 has 0 of 4 rows");
  EXPECT_EQ(store_->Stats().open_appends, 0);
  EXPECT_EQ(client_->GetSession("s")->num_tokens(), 6);
}

TEST_F(KvStoreServiceTest, StatsCountAndAThousandLeasesComeAndGo) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("a")).ok());
  ASSERT_TRUE(client_->CreateSession(SmallSession("b")).ok());
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<StoreLease> l = client_->AcquireLease(i % 2 ? "a" : "b", absl::Seconds(10), "bench");
    ASSERT_TRUE(l.ok()) << l.status();
    ASSERT_TRUE(client_->ReleaseLease(*l).ok());
  }
  v1::StatsResponse st = client_->Stats().value();
  EXPECT_EQ(st.sessions(), 2);
  EXPECT_EQ(st.leases(), 0);
  const StoreLease held = client_->AcquireLease("a", absl::Seconds(10), "x").value();
  ASSERT_TRUE(client_->RenewLease(held, absl::Seconds(20)).ok());
  const std::string open = Begin("b", 0, 3);
  st = client_->Stats().value();
  EXPECT_EQ(st.leases(), 1);
  EXPECT_EQ(st.open_appends(), 1);
  EXPECT_EQ(st.pool_capacity_bytes(), int64_t{256} << 20);
  EXPECT_EQ(st.pool_used_bytes(), 2 * 6 * int64_t(FromProto(SmallSession("a").geometry())->layout.page_bytes()));
  v1::AbortAppendRequest a;
  a.set_append_id(open);
  v1::AbortAppendResponse ar;
  ASSERT_TRUE(stub_->AbortAppend(Ctx().get(), a, &ar).ok());
  ASSERT_TRUE(client_->DeleteSession("b").ok());
  clock_.Advance(absl::Seconds(11));
  store_->ReapOnce();
  st = client_->Stats().value();
  EXPECT_EQ(st.sessions(), 1);
  EXPECT_EQ(st.leases(), 1);  // renewed to 20 s
  EXPECT_EQ(st.aborted_appends(), 1);
  clock_.Advance(absl::Seconds(10));
  store_->ReapOnce();
  st = client_->Stats().value();
  EXPECT_EQ(st.leases(), 0);
  EXPECT_EQ(st.expired_leases(), 1);

  v1::ListSessionsRequest lr;
  v1::ListSessionsResponse list;
  ASSERT_TRUE(stub_->ListSessions(Ctx().get(), lr, &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);
  EXPECT_EQ(list.sessions(0).session_id(), "a");
  EXPECT_EQ(list.sessions(0).tenant(), "default");
  EXPECT_EQ(list.sessions(0).geometry().head_dim(), 8);
  EXPECT_EQ(list.sessions(0).policy().window(), 8);
  EXPECT_EQ(list.sessions(0).policy().kind(), v1::POLICY_CLUSTERKV);
  EXPECT_GT(list.sessions(0).expires_unix_ms(), list.sessions(0).created_unix_ms());

  // Every handler records its calls; the gauges follow the store.
  const std::string metrics = RenderMetrics(metrics_->registry());
  EXPECT_THAT(metrics, HasSubstr("livekv_requests_total{code=\"0\",method=\"AcquireLease\",service=\"kvstore\"} 1001"));
  EXPECT_THAT(metrics, HasSubstr("livekv_requests_total{code=\"0\",method=\"ReleaseLease\",service=\"kvstore\"} 1000"));
  EXPECT_THAT(metrics, HasSubstr("livekv_sessions{service=\"kvstore\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("livekv_open_appends{service=\"kvstore\"} 0"));
  EXPECT_THAT(metrics, HasSubstr("livekv_pool_bytes_used{service=\"kvstore\"}"));
  EXPECT_THAT(metrics, HasSubstr("livekv_prefetch_hit_rate{service=\"kvstore\"} 0"));
  EXPECT_THAT(metrics, HasSubstr("livekv_cold_bytes{service=\"kvstore\"} 0"));
}

TEST_F(KvStoreServiceTest, BadChannelRequestsGetTheirCodesAndPinNothing) {
  ASSERT_TRUE(client_->CreateSession(SmallSession("a")).ok());
  const Rows rows = MakeRows(*FromProto(SmallSession("a").geometry()), 0, 12);
  ASSERT_TRUE(client_->Append("a", 0, 12, rows.keys, rows.values, {}).ok());
  const StoreLease lease = client_->AcquireLease("a", absl::Seconds(10), "x").value();

  auto open = [&](const std::string& session, const std::string& lease_id, std::vector<int> want) {
    v1::OpenChannelRequest r;
    r.set_session_id(session);
    r.set_lease_id(lease_id);
    for (int w : want) r.add_want(static_cast<v1::ChannelKind>(w));
    v1::OpenChannelResponse resp;
    return std::make_pair(FromGrpcStatus(stub_->OpenChannel(Ctx().get(), r, &resp)), resp);
  };
  EXPECT_ERROR(open("nope", lease.lease_id, {}).first, kNotFound, "nope");
  EXPECT_ERROR(open("a", "lease-nope", {}).first, kNotFound, "lease-nope");
  EXPECT_ERROR(open("a", lease.lease_id, {1, 7}).first, kInvalidArgument, "want[1]: 7");
  EXPECT_ERROR(open("a", lease.lease_id, {0}).first, kInvalidArgument, "want[0]: 0");
  // A store without a data plane offers no direct channel, and says why.
  const auto [ok, offer] = open("a", lease.lease_id, {});
  ASSERT_TRUE(ok.ok()) << ok;
  EXPECT_FALSE(offer.has_shm());
  EXPECT_FALSE(offer.has_ucx());
  EXPECT_THAT(offer.shm_unavailable(), HasSubstr("without a data plane"));
  EXPECT_EQ(offer.geometry().head_dim(), 8);

  auto resolve = [&](const std::string& lease_id, int layer, int head, std::vector<int64_t> pages,
                     std::vector<int32_t> clusters) {
    v1::ResolveBlocksRequest r;
    r.set_session_id("a");
    r.set_lease_id(lease_id);
    v1::BlockSet* set = r.add_blocks();
    set->set_layer(layer);
    set->set_kv_head(head);
    for (int64_t p : pages) set->add_pages(p);
    for (int32_t c : clusters) set->add_clusters(c);
    v1::ResolveBlocksResponse resp;
    return FromGrpcStatus(stub_->ResolveBlocks(Ctx().get(), r, &resp));
  };
  EXPECT_ERROR(resolve("lease-nope", 0, 0, {4}, {}), kNotFound, "lease-nope");
  EXPECT_ERROR(resolve(lease.lease_id, 9, 0, {4}, {}), kInvalidArgument, "9");
  EXPECT_ERROR(resolve(lease.lease_id, 0, 5, {4}, {}), kInvalidArgument, "5");
  EXPECT_ERROR(resolve(lease.lease_id, 0, 0, {4}, {3}), kInvalidArgument, "cluster");
  EXPECT_ERROR(resolve(lease.lease_id, 0, 0, {4, 400}, {}), kNotFound, "400");
  v1::StatsResponse st = client_->Stats().value();
  EXPECT_EQ(st.pinned_runs(), 0);  // a failed resolve pins nothing, not even the blocks before the bad one
  EXPECT_EQ(st.resolved_blocks(), 0);

  ASSERT_TRUE(resolve(lease.lease_id, 0, 0, {4, 8}, {}).ok());
  EXPECT_EQ(client_->Stats()->pinned_runs(), 2);
  ASSERT_TRUE(client_->ReleaseLease(lease).ok());
  st = client_->Stats().value();
  EXPECT_EQ(st.pinned_runs(), 0);
  EXPECT_EQ(st.pinned_bytes(), 0);
}

}  // namespace
}  // namespace livekv
