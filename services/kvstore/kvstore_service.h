// File: services/kvstore/kvstore_service.h
//
// The gRPC adapter of the KV store (proto/livekv/v1/kvstore.proto) over a SessionStore: converts requests to
// domain types (services/common/convert.h), calls the store, converts back, and records every call's method, code
// and latency in the service's metrics.
//
//   SessionStore store(SessionStore::Options{}, Clock::Real());
//   ServiceMetrics metrics("kvstore");
//   KvStoreService service(&store, &metrics);
//   GrpcServer server;
//   LIVEKV_RETURN_IF_ERROR(server.Start("127.0.0.1:0", {&service}));
//
// Streams:
//   AppendKv reads the client stream until it ends, staging each message in the append it names (append_id on the
//   first message). If the call fails — a malformed or oversized message, or the stream breaks (the client
//   cancelled, its deadline passed, the peer went away) — the append is aborted: a writer that failed half way
//   must begin again, and its half-sent rows never reach the session.
//   Recall streams the blocks' bytes in chunks of at most 4 MiB (options.recall_chunk_bytes), each copied under the
//   session's shared lock and written without it; an empty request yields one empty chunk (so the client learns
//   total_bytes = 0).
// Channels: OpenChannel answers with what options.data_plane offers (none without one: every kind then carries
// its reason); ResolveBlocks pins and locates blocks (SessionStore::ResolveBlocks) whatever the data plane.
// Handlers block on nothing but a session's lock (and, for streams, their own client).
//
// Thread-safety: thread-safe (gRPC calls handlers concurrently).
#ifndef LIVEKV_SERVICES_KVSTORE_KVSTORE_SERVICE_H_
#define LIVEKV_SERVICES_KVSTORE_KVSTORE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "common/metrics/metrics.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"
#include "services/kvstore/data_plane.h"
#include "services/kvstore/session_store.h"

namespace livekv {

class KvStoreService final : public v1::KvStore::Service {
 public:
  struct Options {
    size_t recall_chunk_bytes = size_t{4} << 20;
    // AppendKv messages larger than this are INVALID_ARGUMENT (the client sends ~4 MiB pieces).
    size_t max_append_message_bytes = size_t{16} << 20;
    // GetIndex and ListSessions responses larger than this are RESOURCE_EXHAUSTED (ask for fewer layers); below the
    // 64 MiB message limit of common/rpc.
    size_t max_response_bytes = size_t{60} << 20;
    // Borrowed; what OpenChannel offers. Null: no channel but gRPC.
    DataPlane* data_plane = nullptr;
  };

  // `store` and `metrics` are borrowed and must outlive the service; `metrics` may be null.
  KvStoreService(SessionStore* store, ServiceMetrics* metrics, const Options& options);
  KvStoreService(SessionStore* store, ServiceMetrics* metrics) : KvStoreService(store, metrics, Options{}) {}

  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                             v1::Session* response) override;
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status BeginAppend(grpc::ServerContext* context, const v1::BeginAppendRequest* request,
                           v1::BeginAppendResponse* response) override;
  grpc::Status AppendKv(grpc::ServerContext* context, grpc::ServerReader<v1::AppendKvRequest>* reader,
                        v1::AppendKvResponse* response) override;
  grpc::Status CommitAppend(grpc::ServerContext* context, const v1::CommitAppendRequest* request,
                            v1::CommitAppendResponse* response) override;
  grpc::Status AbortAppend(grpc::ServerContext* context, const v1::AbortAppendRequest* request,
                           v1::AbortAppendResponse* response) override;
  grpc::Status GetIndex(grpc::ServerContext* context, const v1::GetIndexRequest* request,
                        v1::GetIndexResponse* response) override;
  grpc::Status Recall(grpc::ServerContext* context, const v1::RecallRequest* request,
                      grpc::ServerWriter<v1::RecallChunk>* writer) override;
  grpc::Status AcquireLease(grpc::ServerContext* context, const v1::AcquireLeaseRequest* request,
                            v1::Lease* response) override;
  grpc::Status RenewLease(grpc::ServerContext* context, const v1::RenewLeaseRequest* request,
                          v1::Lease* response) override;
  grpc::Status ReleaseLease(grpc::ServerContext* context, const v1::ReleaseLeaseRequest* request,
                            v1::ReleaseLeaseResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;
  grpc::Status OpenChannel(grpc::ServerContext* context, const v1::OpenChannelRequest* request,
                           v1::OpenChannelResponse* response) override;
  grpc::Status ResolveBlocks(grpc::ServerContext* context, const v1::ResolveBlocksRequest* request,
                             v1::ResolveBlocksResponse* response) override;

 private:
  using Start = std::chrono::steady_clock::time_point;
  // Records the call and refreshes the gauges; returns `status` as a grpc::Status.
  grpc::Status Done(const char* method, Start start, const absl::Status& status);
  absl::Status DoAppendKv(grpc::ServerContext* context, grpc::ServerReader<v1::AppendKvRequest>* reader,
                          v1::AppendKvResponse* response);
  absl::Status DoRecall(grpc::ServerContext* context, const v1::RecallRequest& request,
                        grpc::ServerWriter<v1::RecallChunk>* writer);

  SessionStore* const store_;
  ServiceMetrics* const metrics_;
  const Options options_;
  // Owned by metrics_'s registry (null without metrics).
  prometheus::Gauge* sessions_ = nullptr;
  prometheus::Gauge* leases_ = nullptr;
  prometheus::Gauge* open_appends_ = nullptr;
  prometheus::Gauge* pool_bytes_used_ = nullptr;
  prometheus::Gauge* cold_bytes_ = nullptr;
  prometheus::Gauge* prefetched_runs_ = nullptr;
  prometheus::Gauge* prefetch_hits_ = nullptr;
  prometheus::Gauge* prefetch_misses_ = nullptr;
  prometheus::Gauge* prefetch_hit_rate_ = nullptr;
  prometheus::Counter* recall_bytes_ = nullptr;
  prometheus::Histogram* recall_seconds_ = nullptr;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_KVSTORE_SERVICE_H_
