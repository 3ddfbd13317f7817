// File: services/prefill/prefill_client.h
//
// A typed client of the prefill service (used by the decode service and the SDK). Every call has a deadline.
#ifndef LIVEKV_SERVICES_PREFILL_PREFILL_CLIENT_H_
#define LIVEKV_SERVICES_PREFILL_PREFILL_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/livekv/v1/prefill.grpc.pb.h"

namespace livekv {

class PrefillClient {
 public:
  PrefillClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout = absl::Seconds(300));
  absl::StatusOr<v1::AppendTextResponse> AppendText(const std::string& session_id, const std::string& text,
                                                    bool add_bos);
  absl::StatusOr<v1::AppendTextResponse> AppendTokens(const std::string& session_id,
                                                      const std::vector<int32_t>& ids);

 private:
  absl::StatusOr<v1::AppendTextResponse> Call(const v1::AppendTextRequest& request);
  std::unique_ptr<v1::Prefill::Stub> stub_;
  const absl::Duration timeout_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_PREFILL_PREFILL_CLIENT_H_
