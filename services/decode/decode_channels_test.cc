// Decode over every KV channel: a real KV store on 127.0.0.1:0 with its pools in shared memory and a UCX worker
// (UCX_NET_DEVICES=lo), a session filled by the prefill worker, and the decode worker answering the same question
// with the channel forced to gRPC, shm and UCX, and chosen by itself. The answers are token for token the same, each
// recalled its bytes over the channel it reports, and FreeKV speculation with every head corrected (tau = 1) gives
// the synchronous answer over the shared-memory channel too.
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/rpc/client.h"
#include "common/rpc/server.h"
#include "common/shm/shm_arena.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "gtest/gtest.h"
#include "kvcache/policy_kv_context.h"
#include "models/eval_set.h"
#include "services/common/convert.h"
#include "services/channels/ucx.h"
#include "services/decode/decode_worker.h"
#include "services/kvstore/data_plane.h"
#include "services/kvstore/kvstore_client.h"
#include "services/kvstore/kvstore_service.h"
#include "services/kvstore/session_store.h"
#include "services/prefill/prefill_worker.h"

namespace livekv {
namespace {

class DecodeChannelsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { grpc_init(); }  // keep gRPC up between tests (no 10 s teardown per test)

  void SetUp() override {
    arena_ = ShmArena::Create({"livekvdecodetest", ShmArena::Prefault::kNone}).value();
    SessionStore::Options so;
    so.pool_bytes = size_t{256} << 20;
    store_ = std::make_unique<SessionStore>(so, &clock_, arena_.get());
    DataPlane::Options po;
    po.shm = arena_.get();
    po.ucx = true;
    plane_ = std::make_unique<DataPlane>(po);
    KvStoreService::Options service_options;
    service_options.data_plane = plane_.get();
    service_ = std::make_unique<KvStoreService>(store_.get(), nullptr, service_options);
    ASSERT_TRUE(server_.Start("127.0.0.1:0", {service_.get()}).ok());
    client_ = std::make_unique<KvStoreClient>(MakeChannel(server_.address()));
    prefill_model_ = std::make_unique<LoadedModel>(LoadModel("models/tiny", &prefill_backend_).value());
    decode_model_ = std::make_unique<LoadedModel>(LoadModel("models/tiny", &decode_backend_).value());
    PrefillWorkerOptions po2;
    po2.model_name = "tiny";
    prefill_ = std::make_unique<PrefillWorker>(prefill_model_.get(), &prefill_backend_, client_.get(), po2);
  }

  void TearDown() override { server_.Shutdown(absl::Seconds(1)); }

  // A session of `policy` holding `doc`'s document.
  std::string Session(const PolicyOptions& policy, const EvalDoc& doc) {
    v1::CreateSessionRequest req;
    req.set_model("tiny");
    *req.mutable_geometry() = ToProto(GeometryFor(decode_model_->config, policy));
    *req.mutable_policy() = ToProto(policy);
    const std::string id = client_->CreateSession(req).value().session_id();
    const std::vector<int32_t> ids = prefill_model_->tokenizer->EncodeWithSpecials(doc.document()).value();
    EXPECT_TRUE(prefill_->Append(id, ids, [] { return false; }).ok());
    return id;
  }

  GenerateOutcome Answer(const std::string& session, const EvalDoc& doc, const std::string& channel) {
    DecodeWorkerOptions o;
    o.model_name = "tiny";
    o.channel.force = channel;
    DecodeWorker worker(decode_model_.get(), &decode_backend_, client_.get(), nullptr, o);
    GenerateParams p;
    p.session_id = session;
    p.prompt = doc.question();
    p.max_tokens = 10;
    absl::StatusOr<GenerateOutcome> out = worker.Generate(
        p, [](absl::Span<const int32_t>, absl::string_view) { return true; }, [] { return false; });
    EXPECT_TRUE(out.ok()) << channel << ": " << out.status();
    return out.ok() ? *out : GenerateOutcome{};
  }

  FakeClock clock_;
  std::unique_ptr<ShmArena> arena_;
  std::unique_ptr<SessionStore> store_;
  std::unique_ptr<DataPlane> plane_;
  std::unique_ptr<KvStoreService> service_;
  GrpcServer server_;
  std::unique_ptr<KvStoreClient> client_;
  CpuBackend prefill_backend_{CpuBackendOptions{.num_threads = 2}};
  CpuBackend decode_backend_{CpuBackendOptions{.num_threads = 2}};
  std::unique_ptr<LoadedModel> prefill_model_, decode_model_;
  std::unique_ptr<PrefillWorker> prefill_;
};

TEST_F(DecodeChannelsTest, EveryChannelGivesTheSameAnswer) {
  if (absl::Status u = ucx::ClientContext().status(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  ASSERT_TRUE(plane_->ucx_status().ok()) << plane_->ucx_status();  // UCX works here, so the store's must too
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 3).value();
  PolicyOptions policy;
  policy.kind = PolicyKind::kClusterKv;
  policy.budget = 512;
  policy.sparse_prefill = true;
  const std::string id = Session(policy, doc);

  const GenerateOutcome grpc = Answer(id, doc, "grpc");
  EXPECT_EQ(grpc.timings.channel, "grpc");
  EXPECT_GT(grpc.timings.recall_bytes, 0);
  EXPECT_EQ(grpc.text, doc.answer);
  for (const std::string channel : {"shm", "ucx", ""}) {
    const GenerateOutcome out = Answer(id, doc, channel);
    EXPECT_EQ(out.ids, grpc.ids) << channel;
    EXPECT_EQ(out.timings.channel, channel.empty() ? "shm" : channel);  // same host: shared memory
    EXPECT_EQ(out.timings.recall_bytes, grpc.timings.recall_bytes) << channel;
  }
  // Every lease ended with its call: nothing stays pinned.
  const v1::StatsResponse st = client_->Stats().value();
  EXPECT_EQ(st.leases(), 0);
  EXPECT_EQ(st.pinned_runs(), 0);
  EXPECT_GT(st.resolved_blocks(), 0);
}

TEST_F(DecodeChannelsTest, SpeculationCorrectingEveryHeadIsSynchronousRecallOverSharedMemory) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 4).value();
  PolicyOptions sync;
  sync.kind = PolicyKind::kClusterKv;
  sync.budget = 512;
  sync.sparse_prefill = true;
  PolicyOptions spec = sync;
  spec.speculative = true;
  spec.correction_threshold = 1.0f;
  const GenerateOutcome a = Answer(Session(sync, doc), doc, "shm");
  const GenerateOutcome b = Answer(Session(spec, doc), doc, "shm");
  EXPECT_EQ(a.timings.channel, "shm");
  EXPECT_EQ(b.timings.channel, "shm");
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(b.text, doc.answer);
}

TEST_F(DecodeChannelsTest, AnUnknownForcedChannelIsInvalid) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 3).value();
  PolicyOptions policy;
  const std::string id = Session(policy, doc);
  DecodeWorkerOptions o;
  o.model_name = "tiny";
  o.channel.force = "carrier-pigeon";
  DecodeWorker worker(decode_model_.get(), &decode_backend_, client_.get(), nullptr, o);
  GenerateParams p;
  p.session_id = id;
  p.prompt = doc.question();
  p.max_tokens = 2;
  absl::StatusOr<GenerateOutcome> out =
      worker.Generate(p, [](absl::Span<const int32_t>, absl::string_view) { return true; }, [] { return false; });
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << out.status();
  EXPECT_EQ(client_->Stats()->leases(), 0);  // the lease was released
}

}  // namespace
}  // namespace livekv
