#include "tests/integration/in_process_cluster.h"

#include "common/rpc/client.h"
#include "common/status_macros.h"
#include "services/common/convert.h"

namespace livekv {

absl::StatusOr<std::unique_ptr<InProcessCluster>> InProcessCluster::Start(const std::string& model_dir) {
  std::unique_ptr<InProcessCluster> c(new InProcessCluster());
  SessionStore::Options store_options;
  store_options.pool_bytes = size_t{1} << 30;
  c->session_store_ = std::make_unique<SessionStore>(store_options, &c->clock_);
  c->store_service_ = std::make_unique<KvStoreService>(c->session_store_.get(), &c->store_metrics_);
  LIVEKV_RETURN_IF_ERROR(c->store_server_.Start("127.0.0.1:0", {c->store_service_.get()}));

  LIVEKV_ASSIGN_OR_RETURN(LoadedModel p, LoadModel(model_dir, &c->prefill_backend_));
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel d, LoadModel(model_dir, &c->decode_backend_));
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel r, LoadModel(model_dir, &c->reference_backend_));
  c->prefill_model_ = std::make_unique<LoadedModel>(std::move(p));
  c->decode_model_ = std::make_unique<LoadedModel>(std::move(d));
  c->reference_model_ = std::make_unique<LoadedModel>(std::move(r));

  c->prefill_store_client_ = std::make_unique<KvStoreClient>(MakeChannel(c->store_server_.address()));
  PrefillWorkerOptions popts;
  popts.model_name = "tiny";
  c->prefill_worker_ = std::make_unique<PrefillWorker>(c->prefill_model_.get(), &c->prefill_backend_,
                                                       c->prefill_store_client_.get(), popts);
  c->prefill_service_ = std::make_unique<PrefillService>(c->prefill_worker_.get(), &c->prefill_metrics_);
  LIVEKV_RETURN_IF_ERROR(c->prefill_server_.Start("127.0.0.1:0", {c->prefill_service_.get()}));

  c->decode_store_client_ = std::make_unique<KvStoreClient>(MakeChannel(c->store_server_.address()));
  c->decode_prefill_client_ = std::make_unique<PrefillClient>(MakeChannel(c->prefill_server_.address()));
  DecodeWorkerOptions dopts;
  dopts.model_name = "tiny";
  c->decode_worker_ = std::make_unique<DecodeWorker>(c->decode_model_.get(), &c->decode_backend_,
                                                     c->decode_store_client_.get(), c->decode_prefill_client_.get(),
                                                     dopts);
  c->decode_service_ = std::make_unique<DecodeService>(c->decode_worker_.get(), &c->decode_metrics_);
  LIVEKV_RETURN_IF_ERROR(c->decode_server_.Start("127.0.0.1:0", {c->decode_service_.get()}));

  c->store_stub_ = v1::KvStore::NewStub(MakeChannel(c->store_server_.address()));
  c->prefill_stub_ = v1::Prefill::NewStub(MakeChannel(c->prefill_server_.address()));
  c->decode_stub_ = v1::Decode::NewStub(MakeChannel(c->decode_server_.address()));
  c->store_client_ = std::make_unique<KvStoreClient>(MakeChannel(c->store_server_.address()));
  return c;
}

InProcessCluster::~InProcessCluster() {
  decode_server_.Shutdown(absl::Seconds(1));
  prefill_server_.Shutdown(absl::Seconds(1));
  store_server_.Shutdown(absl::Seconds(1));
}

absl::StatusOr<v1::Session> InProcessCluster::CreateSession(const PolicyOptions& policy,
                                                           const std::string& session_id) {
  v1::CreateSessionRequest req;
  req.set_model("tiny");
  req.set_session_id(session_id);
  *req.mutable_geometry() = ToProto(GeometryFor(reference_model_->config, policy));
  *req.mutable_policy() = ToProto(policy);
  return store_client_->CreateSession(req);
}

}  // namespace livekv
