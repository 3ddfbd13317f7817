// File: tests/integration/in_process_cluster.h
//
// The three services in one test process, each behind its own real gRPC server on 127.0.0.1:0, with the embedded
// model (models/tiny) loaded separately by prefill and decode, as in a deployment. For suites that span services.
#ifndef LIVEKV_TESTS_INTEGRATION_IN_PROCESS_CLUSTER_H_
#define LIVEKV_TESTS_INTEGRATION_IN_PROCESS_CLUSTER_H_

#include <memory>
#include <string>

#include "common/clock.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "proto/livekv/v1/decode.grpc.pb.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"
#include "proto/livekv/v1/prefill.grpc.pb.h"
#include "services/decode/decode_service.h"
#include "services/kvstore/kvstore_service.h"
#include "services/kvstore/session_store.h"
#include "services/prefill/prefill_service.h"

namespace livekv {

class InProcessCluster {
 public:
  static absl::StatusOr<std::unique_ptr<InProcessCluster>> Start(const std::string& model_dir = "models/tiny");
  ~InProcessCluster();

  v1::KvStore::Stub& store() { return *store_stub_; }
  v1::Prefill::Stub& prefill() { return *prefill_stub_; }
  v1::Decode::Stub& decode() { return *decode_stub_; }
  KvStoreClient& store_client() { return *store_client_; }
  const LoadedModel& model() const { return *reference_model_; }
  CpuBackend& reference_backend() { return reference_backend_; }
  std::string store_address() const { return store_server_.address(); }

  // A session for the embedded model under `policy`.
  absl::StatusOr<v1::Session> CreateSession(const PolicyOptions& policy, const std::string& session_id = "");

 private:
  InProcessCluster() = default;

  RealClock clock_;
  std::unique_ptr<SessionStore> session_store_;
  ServiceMetrics store_metrics_{"kvstore"}, prefill_metrics_{"prefill"}, decode_metrics_{"decode"};
  std::unique_ptr<KvStoreService> store_service_;
  GrpcServer store_server_, prefill_server_, decode_server_;

  CpuBackend prefill_backend_{CpuBackendOptions{.num_threads = 2}};
  CpuBackend decode_backend_{CpuBackendOptions{.num_threads = 2}};
  CpuBackend reference_backend_{CpuBackendOptions{.num_threads = 2}};
  std::unique_ptr<LoadedModel> prefill_model_, decode_model_, reference_model_;
  std::unique_ptr<KvStoreClient> prefill_store_client_, decode_store_client_, store_client_;
  std::unique_ptr<PrefillClient> decode_prefill_client_;
  std::unique_ptr<PrefillWorker> prefill_worker_;
  std::unique_ptr<PrefillService> prefill_service_;
  std::unique_ptr<DecodeWorker> decode_worker_;
  std::unique_ptr<DecodeService> decode_service_;

  std::unique_ptr<v1::KvStore::Stub> store_stub_;
  std::unique_ptr<v1::Prefill::Stub> prefill_stub_;
  std::unique_ptr<v1::Decode::Stub> decode_stub_;
};

}  // namespace livekv

#endif  // LIVEKV_TESTS_INTEGRATION_IN_PROCESS_CLUSTER_H_
