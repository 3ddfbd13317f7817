// File: services/prefill/prefill_service.h
//
// The gRPC edge of the prefill service (proto/livekv/v1/prefill.proto): converts requests, calls PrefillWorker,
// records metrics. Thread-safety: thread-safe.
#ifndef LIVEKV_SERVICES_PREFILL_PREFILL_SERVICE_H_
#define LIVEKV_SERVICES_PREFILL_PREFILL_SERVICE_H_

#include "common/metrics/metrics.h"
#include "proto/livekv/v1/prefill.grpc.pb.h"
#include "services/prefill/prefill_worker.h"

namespace livekv {

class PrefillService final : public v1::Prefill::Service {
 public:
  // `max_input_bytes` bounds a request's text (INVALID_ARGUMENT beyond it).
  PrefillService(PrefillWorker* worker, ServiceMetrics* metrics, int64_t max_input_bytes = 16 << 20);

  grpc::Status AppendText(grpc::ServerContext* context, const v1::AppendTextRequest* request,
                          v1::AppendTextResponse* response) override;

 private:
  PrefillWorker* const worker_;
  ServiceMetrics* const metrics_;
  const int64_t max_input_bytes_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_PREFILL_PREFILL_SERVICE_H_
