#include "services/decode/decode_worker.h"

#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvcache/policy_kv_context.h"
#include "services/common/convert.h"
#include "services/channels/kv_channel.h"
#include "services/decode/remote_block_fetcher.h"
#include "services/common/session_policy.h"

namespace livekv {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Holds back the end of the text that could still become a stop string, so stop strings never reach the client.
class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops) : stops_(stops) {}
  // Adds text; returns what can be released now. `*stopped` turns true when a stop string completed (the text
  // before it is released, the stop string and anything after are dropped).
  std::string Push(absl::string_view piece, bool* stopped) {
    pending_.append(piece.data(), piece.size());
    for (const std::string& s : stops_) {
      const size_t at = s.empty() ? std::string::npos : pending_.find(s);
      if (at != std::string::npos) {
        *stopped = true;
        std::string out = pending_.substr(0, at);
        pending_.clear();
        return out;
      }
    }
    size_t hold = 0;  // the longest suffix of pending that is a proper prefix of some stop string
    for (const std::string& s : stops_) {
      for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), pending_.size()); k > hold; --k) {
        if (absl::EndsWith(pending_, absl::string_view(s).substr(0, k))) {
          hold = k;
          break;
        }
      }
    }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string Flush() {
    std::string out = std::move(pending_);
    pending_.clear();
    return out;
  }

 private:
  const std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace

DecodeWorker::DecodeWorker(const LoadedModel* model, CpuBackend* backend, KvStoreClient* store,
                           PrefillClient* prefill, const DecodeWorkerOptions& options)
    : model_(model), backend_(backend), store_(store), prefill_(prefill), options_(options) {}

absl::StatusOr<GenerateOutcome> DecodeWorker::Generate(
    const GenerateParams& params, const std::function<bool(absl::Span<const int32_t>, absl::string_view)>& emit,
    const std::function<bool()>& cancelled) {
  const auto start = std::chrono::steady_clock::now();
  if (params.max_tokens <= 0 || params.max_tokens > options_.max_tokens_limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be in [1, ", options_.max_tokens_limit, "], saw ", params.max_tokens));
  }
  LIVEKV_RETURN_IF_ERROR(params.sampling.Validate());
  const Tokenizer& tok = *model_->tokenizer;
  const bool one_shot = params.session_id.empty();
  LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, (one_shot || params.add_bos)
                                                           ? tok.EncodeWithSpecials(params.prompt)
                                                           : tok.Encode(params.prompt));
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  if (!one_shot) return GenerateOnSession(params, prompt, emit, cancelled, start);

  // One-shot: all but the last prompt token go into a temporary session through the prefill service; decoding
  // then starts from the last token. The temporary session is deleted however the call ends.
  if (prefill_ == nullptr) return absl::FailedPreconditionError("one-shot prompts need a prefill service");
  if (params.append_turn) return absl::InvalidArgumentError("append_turn needs a session_id");
  v1::CreateSessionRequest create;
  create.set_model(options_.model_name);
  *create.mutable_geometry() = ToProto(GeometryFor(model_->config, options_.one_shot_policy));
  *create.mutable_policy() = ToProto(options_.one_shot_policy);
  create.set_ttl_seconds(600);
  create.set_tenant("one-shot");
  LIVEKV_ASSIGN_OR_RETURN(v1::Session temp, store_->CreateSession(create));
  absl::Cleanup drop = [&] { (void)store_->DeleteSession(temp.session_id()); };
  const auto t0 = std::chrono::steady_clock::now();
  if (prompt.size() > 1) {
    LIVEKV_RETURN_IF_ERROR(
        prefill_->AppendTokens(temp.session_id(), std::vector<int32_t>(prompt.begin(), prompt.end() - 1)).status());
  }
  const double one_shot_ms = MsSince(t0);
  GenerateParams on_session = params;
  on_session.session_id = temp.session_id();
  LIVEKV_ASSIGN_OR_RETURN(GenerateOutcome out,
                          GenerateOnSession(on_session, {prompt.back()}, emit, cancelled, start));
  out.timings.one_shot_prefill_ms = one_shot_ms;
  out.timings.prompt_tokens = static_cast<int64_t>(prompt.size());
  return out;
}

absl::StatusOr<GenerateOutcome> DecodeWorker::GenerateOnSession(
    const GenerateParams& params, const std::vector<int32_t>& prompt,
    const std::function<bool(absl::Span<const int32_t>, absl::string_view)>& emit,
    const std::function<bool()>& cancelled, std::chrono::steady_clock::time_point start) {
  const ModelConfig& config = model_->config;
  LIVEKV_ASSIGN_OR_RETURN(v1::Session session, store_->GetSession(params.session_id));
  LIVEKV_ASSIGN_OR_RETURN(PolicyOptions policy, SessionPolicy(session, config, options_.model_name));
  const int64_t budget_tokens = session.num_tokens() + static_cast<int64_t>(prompt.size()) + params.max_tokens;
  if (budget_tokens > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("session ", params.session_id, " (", session.num_tokens(),
                                                   " tokens) + prompt (", prompt.size(), ") + max_tokens (",
                                                   params.max_tokens, ") exceed the model's ",
                                                   config.max_position_embeddings, " positions"));
  }
  LIVEKV_ASSIGN_OR_RETURN(StoreLease lease, store_->AcquireLease(params.session_id, options_.lease_ttl, "decode"));
  absl::Cleanup release = [&] { (void)store_->ReleaseLease(lease); };
  auto renewed = std::chrono::steady_clock::now();

  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, CreateKvPagePool(config, policy, budget_tokens + 1, &host_));
  LIVEKV_ASSIGN_OR_RETURN(KvStoreClient::Mirror mirror,
                          store_->LoadMirror(params.session_id, lease, pool.get(), /*with_bytes=*/false));
  const int64_t version = mirror.version;
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PolicyKvContext> kv,
                          PolicyKvContext::Adopt(config, policy, std::move(mirror.kv), backend_->pool()));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<KvChannel> channel,
                          OpenKvChannel(store_, params.session_id, lease, version, options_.channel));
  RemoteBlockFetcher fetcher(kv->mutable_sequence(), std::move(channel));
  // The positional tail is attended at every step by clusterkv and full, and the prompt's rows are appended
  // into its last page: recall it before anything local is written.
  LIVEKV_RETURN_IF_ERROR(
      fetcher.FetchEager(policy.kind == PolicyKind::kClusterKv || policy.kind == PolicyKind::kFull));
  kv->set_block_fetcher(&fetcher);

  GenerateOutcome out;
  out.timings.prompt_tokens = static_cast<int64_t>(prompt.size());
  Sampler sampler(params.sampling);
  StreamingDecoder decoder(model_->tokenizer.get());
  StopMatcher stops(params.stop);
  std::vector<float> logits;
  auto forward = [&](absl::Span<const int32_t> ids) -> absl::Status {
    if (cancelled && cancelled()) return absl::CancelledError("the generation was cancelled");
    // Keep the lease alive through long generations.
    if (std::chrono::steady_clock::now() - renewed > absl::ToChronoSeconds(options_.lease_ttl / 3)) {
      LIVEKV_RETURN_IF_ERROR(store_->RenewLease(lease, options_.lease_ttl));
      renewed = std::chrono::steady_clock::now();
    }
    absl::MutexLock lock(&model_mu_);
    return model_->transformer->Forward(ids, kv.get(), /*all_logits=*/false, &logits);
  };

  auto t0 = std::chrono::steady_clock::now();
  LIVEKV_RETURN_IF_ERROR(forward(prompt));
  out.timings.prefill_ms = MsSince(t0);
  const int64_t vocab = config.vocab_size;
  t0 = std::chrono::steady_clock::now();
  out.finish_reason = "length";
  for (int32_t step = 0; step < params.max_tokens; ++step) {
    if (step > 0) {
      const int32_t last[] = {out.ids.back()};
      LIVEKV_RETURN_IF_ERROR(forward(last));
    }
    const int32_t token = sampler.Sample(absl::MakeConstSpan(logits.data() + logits.size() - vocab, vocab));
    if (step == 0) out.timings.first_token_ms = MsSince(start);
    ++out.timings.generated_tokens;
    bool eos = false;
    for (int32_t e : config.eos_token_ids) eos |= token == e;
    if (eos) {
      out.finish_reason = "eos";
      break;
    }
    out.ids.push_back(token);
    LIVEKV_ASSIGN_OR_RETURN(std::string piece, decoder.Push(token));
    bool stopped = false;
    const std::string release_text = stops.Push(piece, &stopped);
    out.text += release_text;
    const int32_t ids[] = {token};
    if (!emit(ids, release_text)) return absl::CancelledError("the client went away");
    if (stopped) {
      out.finish_reason = "stop";
      break;
    }
  }
  if (out.finish_reason != "stop") {
    bool stopped = false;
    std::string rest = stops.Push(decoder.Flush(), &stopped);
    rest += stopped ? "" : stops.Flush();
    if (!rest.empty()) {
      out.text += rest;
      if (!emit({}, rest)) return absl::CancelledError("the client went away");
    }
  }
  out.timings.decode_ms = MsSince(t0);
  LIVEKV_RETURN_IF_ERROR(fetcher.Drain());
  const FetchStats fetched = fetcher.stats();
  out.timings.recall_ms = fetched.recall_seconds * 1e3;
  out.timings.recall_blocked_ms = fetched.blocked_seconds * 1e3;
  out.timings.recall_bytes = fetched.recalled_bytes;
  out.timings.channel = fetcher.channel_name();

  if (params.append_turn) {
    if (prefill_ == nullptr) return absl::FailedPreconditionError("append_turn needs a prefill service");
    std::vector<int32_t> turn = prompt;
    turn.insert(turn.end(), out.ids.begin(), out.ids.end());
    LIVEKV_RETURN_IF_ERROR(prefill_->AppendTokens(params.session_id, turn).status());
  }
  return out;
}

}  // namespace livekv
