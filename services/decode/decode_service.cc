#include "services/decode/decode_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/rpc/status.h"
#include "services/common/convert.h"

namespace livekv {

DecodeService::DecodeService(DecodeWorker* worker, ServiceMetrics* metrics) : worker_(worker), metrics_(metrics) {}

grpc::Status DecodeService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  ++in_flight_;
  const auto t0 = std::chrono::steady_clock::now();
  auto finish = [&](const absl::Status& s) {
    --in_flight_;
    metrics_->RecordRpc("Generate", static_cast<int>(s.code()),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return ToGrpcStatus(s);
  };
  GenerateParams params;
  params.session_id = request->session_id();
  params.prompt = request->prompt();
  params.max_tokens = request->max_tokens() == 0 ? 64 : request->max_tokens();
  absl::StatusOr<SamplingParams> sampling = FromProto(request->sampling());
  if (!sampling.ok()) return finish(sampling.status());
  params.sampling = *sampling;
  params.stop.assign(request->stop().begin(), request->stop().end());
  params.append_turn = request->append_turn();
  params.add_bos = request->add_bos();
  for (size_t i = 0; i < params.stop.size(); ++i) {
    if (params.stop[i].empty() || params.stop[i].size() > 256) {
      return finish(absl::InvalidArgumentError(absl::StrCat("stop[", i, "] must be 1 to 256 bytes")));
    }
  }

  auto& ttft = metrics_->Histogram("livekv_time_to_first_token_seconds", "From request to the first token",
                                   ServiceMetrics::LatencyBuckets());
  auto& itl = metrics_->Histogram("livekv_inter_token_latency_seconds", "Between consecutive tokens",
                                  ServiceMetrics::LatencyBuckets());
  auto last = std::chrono::steady_clock::now();
  bool first = true;
  absl::StatusOr<GenerateOutcome> out = worker_->Generate(
      params,
      [&](absl::Span<const int32_t> ids, absl::string_view text) {
        const auto now = std::chrono::steady_clock::now();
        if (!ids.empty()) {
          (first ? ttft : itl)
              .Observe(std::chrono::duration<double>(now - (first ? t0 : last)).count());
          first = false;
          last = now;
        }
        v1::GenerateResponse r;
        for (int32_t id : ids) r.add_token_ids(id);
        r.set_text(std::string(text));
        return writer->Write(r);
      },
      [context] { return context->IsCancelled(); });
  if (!out.ok()) {
    // The call's own cancellation or deadline is reported as such, whatever the work noticed first.
    if (context->IsCancelled()) {
      metrics_->Counter("livekv_cancelled_generations_total", "Generate calls cancelled by the client").Increment();
      return finish(absl::CancelledError("cancelled by the client"));
    }
    return finish(out.status());
  }
  v1::GenerateResponse last_message;
  last_message.set_finished(true);
  last_message.set_finish_reason(out->finish_reason);
  v1::Timings* t = last_message.mutable_timings();
  t->set_prefill_ms(out->timings.prefill_ms);
  t->set_first_token_ms(out->timings.first_token_ms);
  t->set_decode_ms(out->timings.decode_ms);
  t->set_recall_ms(out->timings.recall_ms);
  t->set_recall_blocked_ms(out->timings.recall_blocked_ms);
  t->set_channel(out->timings.channel);
  t->set_recall_bytes(out->timings.recall_bytes);
  t->set_prompt_tokens(out->timings.prompt_tokens);
  t->set_generated_tokens(out->timings.generated_tokens);
  t->set_tokens_per_second(out->timings.tokens_per_second());
  t->set_one_shot_prefill_ms(out->timings.one_shot_prefill_ms);
  writer->Write(last_message);
  metrics_->Counter("livekv_recall_bytes_total", "Bytes recalled from the KV store").Increment(out->timings.recall_bytes);
  metrics_->Counter("livekv_generated_tokens_total", "Tokens generated").Increment(out->timings.generated_tokens);
  return finish(absl::OkStatus());
}

}  // namespace livekv
