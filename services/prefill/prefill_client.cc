#include "services/prefill/prefill_client.h"

#include "common/rpc/client.h"
#include "common/rpc/status.h"

namespace livekv {

PrefillClient::PrefillClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(v1::Prefill::NewStub(channel)), timeout_(timeout) {}

absl::StatusOr<v1::AppendTextResponse> PrefillClient::Call(const v1::AppendTextRequest& request) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout_);
  v1::AppendTextResponse response;
  grpc::Status s = stub_->AppendText(&ctx, request, &response);
  if (!s.ok()) return FromGrpcStatus(s);
  return response;
}

absl::StatusOr<v1::AppendTextResponse> PrefillClient::AppendText(const std::string& session_id,
                                                                 const std::string& text, bool add_bos) {
  v1::AppendTextRequest request;
  request.set_session_id(session_id);
  request.set_text(text);
  request.set_add_bos(add_bos);
  return Call(request);
}

absl::StatusOr<v1::AppendTextResponse> PrefillClient::AppendTokens(const std::string& session_id,
                                                                   const std::vector<int32_t>& ids) {
  v1::AppendTextRequest request;
  request.set_session_id(session_id);
  for (int32_t id : ids) request.mutable_tokens()->add_ids(id);
  return Call(request);
}

}  // namespace livekv
