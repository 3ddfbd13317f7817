// File: services/decode/decode_service.h
//
// The gRPC edge of the decode service (proto/livekv/v1/decode.proto): converts the request, streams DecodeWorker's
// text to the client, and records time to first token, inter-token latency and per-code request counts.
// Thread-safety: thread-safe.
#ifndef LIVEKV_SERVICES_DECODE_DECODE_SERVICE_H_
#define LIVEKV_SERVICES_DECODE_DECODE_SERVICE_H_

#include "common/metrics/metrics.h"
#include "proto/livekv/v1/decode.grpc.pb.h"
#include "services/decode/decode_worker.h"

namespace livekv {

class DecodeService final : public v1::Decode::Service {
 public:
  DecodeService(DecodeWorker* worker, ServiceMetrics* metrics);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

  // Calls in progress (for tests and graceful shutdown).
  int in_flight() const { return in_flight_.load(); }

 private:
  DecodeWorker* const worker_;
  ServiceMetrics* const metrics_;
  std::atomic<int> in_flight_{0};
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_DECODE_DECODE_SERVICE_H_
