#include "services/prefill/prefill_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/rpc/status.h"

namespace livekv {

PrefillService::PrefillService(PrefillWorker* worker, ServiceMetrics* metrics, int64_t max_input_bytes)
    : worker_(worker), metrics_(metrics), max_input_bytes_(max_input_bytes) {}

grpc::Status PrefillService::AppendText(grpc::ServerContext* context, const v1::AppendTextRequest* request,
                                        v1::AppendTextResponse* response) {
  const auto t0 = std::chrono::steady_clock::now();
  auto finish = [&](const absl::Status& s) {
    metrics_->RecordRpc("AppendText", static_cast<int>(s.code()),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return ToGrpcStatus(s);
  };
  if (request->session_id().empty()) return finish(absl::InvalidArgumentError("session_id is required"));
  std::vector<int32_t> ids;
  switch (request->input_case()) {
    case v1::AppendTextRequest::kText: {
      if (static_cast<int64_t>(request->text().size()) > max_input_bytes_) {
        return finish(absl::InvalidArgumentError(absl::StrCat("text is ", request->text().size(),
                                                              " bytes; at most ", max_input_bytes_, " per request")));
      }
      const Tokenizer& tok = *worker_->model().tokenizer;
      absl::StatusOr<std::vector<int32_t>> enc =
          request->add_bos() ? tok.EncodeWithSpecials(request->text()) : tok.Encode(request->text());
      if (!enc.ok()) return finish(absl::InvalidArgumentError(absl::StrCat("text: ", enc.status().message())));
      ids = std::move(*enc);
      break;
    }
    case v1::AppendTextRequest::kTokens:
      if (static_cast<int64_t>(request->tokens().ids_size()) * 4 > max_input_bytes_) {
        return finish(absl::InvalidArgumentError(absl::StrCat("tokens: ", request->tokens().ids_size(),
                                                              " ids exceed the per-request limit")));
      }
      ids.assign(request->tokens().ids().begin(), request->tokens().ids().end());
      break;
    default:
      return finish(absl::InvalidArgumentError("input: one of text or tokens is required"));
  }
  absl::StatusOr<AppendResult> r =
      worker_->Append(request->session_id(), ids, [context] { return context->IsCancelled(); });
  if (!r.ok()) return finish(r.status());
  response->set_tokens_appended(r->tokens_appended);
  response->set_session_tokens(r->session_tokens);
  response->set_session_version(r->session_version);
  response->set_prefill_ms(r->prefill_ms);
  response->set_recall_ms(r->recall_ms);
  response->set_cluster_ms(r->cluster_ms);
  response->set_write_ms(r->write_ms);
  metrics_->Counter("livekv_prefill_tokens_total", "Tokens prefilled into sessions").Increment(r->tokens_appended);
  metrics_->Histogram("livekv_prefill_seconds", "Model time per append", ServiceMetrics::LatencyBuckets())
      .Observe(r->prefill_ms / 1e3);
  metrics_->Histogram("livekv_recall_seconds", "Time reading a session's context from the store",
                      ServiceMetrics::LatencyBuckets())
      .Observe(r->recall_ms / 1e3);
  return finish(absl::OkStatus());
}

}  // namespace livekv
