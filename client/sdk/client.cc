#include "client/sdk/client.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/rpc/status.h"
#include "common/status_macros.h"
#include "engine/model_config.h"
#include "kvcache/policy_kv_context.h"
#include "services/common/convert.h"

namespace livekv::sdk {
namespace {

// Keeps the code; says which call on which service failed.
absl::Status Annotate(const absl::Status& s, absl::string_view what, absl::string_view address) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(what, " (", address, "): ", s.message()));
}

absl::Status NotConfigured(absl::string_view service) {
  return absl::FailedPreconditionError(
      absl::StrCat("the client has no ", service, " address (ClientOptions::", service, " is empty)"));
}

// 16 hex digits, like the ids the store assigns: ids the client picks itself make a retried CreateSession idempotent.
std::string RandomSessionId() {
  std::random_device device;  // no thread_local generator: static TLS eats small thread stacks
  const uint64_t id = (uint64_t{device()} << 32) | device();
  return absl::StrFormat("%016x", id);
}

std::string LastPathComponent(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const size_t slash = dir.find_last_of('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

v1::SamplingParams ToProto(const SamplingParams& s) {
  v1::SamplingParams p;
  p.set_temperature(s.temperature);
  p.set_top_p(s.top_p);
  p.set_top_k(s.top_k);
  p.set_seed(s.seed);
  return p;
}

// Runs `call` (one attempt, given a fresh context with the deadline set) until it returns something other than
// UNAVAILABLE or the policy's attempts run out.
absl::Status RunWithRetry(const ClientOptions& options, const std::string& what, const std::string& address,
                          const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  return Annotate(RetryOnUnavailable(options.retry,
                                     [&] {
                                       grpc::ClientContext context;
                                       SetDeadline(&context, options.timeout);
                                       return FromGrpcStatus(call(&context));
                                     }),
                  what, address);
}

}  // namespace

template <typename Request, typename Response, typename Call>
absl::StatusOr<Response> Client::Unary(const std::string& what, const std::string& address, const Call& call,
                                       const Request& request) {
  Response response;
  LIVEKV_RETURN_IF_ERROR(RunWithRetry(options_, what, address, [&](grpc::ClientContext* context) {
    response.Clear();
    return call(context, request, &response);
  }));
  return response;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::timeout must be positive, saw ", absl::FormatDuration(options.timeout)));
  }
  if (options.retry.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::retry.max_attempts must be at least 1, saw ", options.retry.max_attempts));
  }
  for (size_t i = 0; i < options.decode.size(); ++i) {
    if (options.decode[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("ClientOptions::decode[", i, "] is empty"));
    }
  }
  return std::unique_ptr<Client>(new Client(options));
}

Client::Client(const ClientOptions& options) : options_(options) {
  if (!options_.kvstore.empty()) kvstore_ = v1::KvStore::NewStub(MakeChannel(options_.kvstore));
  if (!options_.prefill.empty()) prefill_ = v1::Prefill::NewStub(MakeChannel(options_.prefill));
  for (const std::string& address : options_.decode) decode_.push_back(v1::Decode::NewStub(MakeChannel(address)));
}

Client::~Client() = default;

absl::StatusOr<v1::Session> Client::CreateSession(const SessionOptions& options) {
  if (kvstore_ == nullptr) return NotConfigured("kvstore");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(options.model_dir);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat("CreateSession: SessionOptions::model_dir: ", config.status().message()));
  }
  absl::Status valid = options.policy.Validate(config->num_layers);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("CreateSession: SessionOptions::policy: ", valid.message()));
  }
  if (options.ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateSession: SessionOptions::ttl must be >= 0, saw ", absl::FormatDuration(options.ttl)));
  }
  v1::CreateSessionRequest request;
  request.set_tenant(options.tenant);
  const bool own_id = options.session_id.empty();
  request.set_session_id(own_id ? RandomSessionId() : options.session_id);
  request.set_model(options.model_name.empty() ? LastPathComponent(options.model_dir) : options.model_name);
  *request.mutable_geometry() = livekv::ToProto(GeometryFor(*config, options.policy));
  *request.mutable_policy() = livekv::ToProto(options.policy);
  request.set_ttl_seconds(absl::ToInt64Seconds(options.ttl));

  v1::Session session;
  bool maybe_created = false;  // an attempt failed after the store may have created the session
  LIVEKV_RETURN_IF_ERROR(RunWithRetry(options_, "CreateSession", options_.kvstore, [&](grpc::ClientContext* context) {
    session.Clear();
    grpc::Status s = kvstore_->CreateSession(context, request, &session);
    if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS && own_id && maybe_created) {
      // Our own earlier attempt created it (nobody else knows a random id); answer with what it created.
      grpc::ClientContext get_context;
      SetDeadline(&get_context, options_.timeout);
      v1::GetSessionRequest get;
      get.set_session_id(request.session_id());
      return kvstore_->GetSession(&get_context, get, &session);
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) maybe_created = true;
    return s;
  }));
  return session;
}

absl::StatusOr<v1::Session> Client::GetSession(const std::string& id) {
  if (kvstore_ == nullptr) return NotConfigured("kvstore");
  v1::GetSessionRequest request;
  request.set_session_id(id);
  return Unary<v1::GetSessionRequest, v1::Session>(
      "GetSession", options_.kvstore,
      [&](grpc::ClientContext* c, const v1::GetSessionRequest& r, v1::Session* s) {
        return kvstore_->GetSession(c, r, s);
      },
      request);
}

absl::StatusOr<std::vector<v1::Session>> Client::ListSessions(const std::string& tenant) {
  if (kvstore_ == nullptr) return NotConfigured("kvstore");
  v1::ListSessionsRequest request;
  request.set_tenant(tenant);
  LIVEKV_ASSIGN_OR_RETURN(v1::ListSessionsResponse response,
                          (Unary<v1::ListSessionsRequest, v1::ListSessionsResponse>(
                              "ListSessions", options_.kvstore,
                              [&](grpc::ClientContext* c, const v1::ListSessionsRequest& r,
                                  v1::ListSessionsResponse* s) { return kvstore_->ListSessions(c, r, s); },
                              request)));
  return std::vector<v1::Session>(response.sessions().begin(), response.sessions().end());
}

absl::Status Client::DeleteSession(const std::string& id) {
  if (kvstore_ == nullptr) return NotConfigured("kvstore");
  v1::DeleteSessionRequest request;
  request.set_session_id(id);
  // A retry after an attempt that deleted the session but lost its answer sees NOT_FOUND; that is reported as is
  // (the caller cannot tell it from an unknown id, and the session is gone either way).
  return Unary<v1::DeleteSessionRequest, v1::DeleteSessionResponse>(
             "DeleteSession", options_.kvstore,
             [&](grpc::ClientContext* c, const v1::DeleteSessionRequest& r, v1::DeleteSessionResponse* s) {
               return kvstore_->DeleteSession(c, r, s);
             },
             request)
      .status();
}

absl::StatusOr<v1::AppendTextResponse> Client::Append(const std::string& session_id, const std::string& text,
                                                      bool add_bos) {
  if (prefill_ == nullptr) return NotConfigured("prefill");
  v1::AppendTextRequest request;
  request.set_session_id(session_id);
  request.set_text(text);
  request.set_add_bos(add_bos);
  // Retried on UNAVAILABLE like every unary call: an append whose prefill died is aborted by the store's
  // two-phase append, so the retry does not append twice. (Only a prefill that dies between the store's commit
  // and its answer would make the retry append again.)
  return Unary<v1::AppendTextRequest, v1::AppendTextResponse>(
      "AppendText", options_.prefill,
      [&](grpc::ClientContext* c, const v1::AppendTextRequest& r, v1::AppendTextResponse* s) {
        return prefill_->AppendText(c, r, s);
      },
      request);
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  if (kvstore_ == nullptr) return NotConfigured("kvstore");
  return Unary<v1::StatsRequest, v1::StatsResponse>(
      "Stats", options_.kvstore,
      [&](grpc::ClientContext* c, const v1::StatsRequest& r, v1::StatsResponse* s) { return kvstore_->Stats(c, r, s); },
      v1::StatsRequest());
}

absl::StatusOr<std::unique_ptr<Client::GenerateStream>> Client::Generate(const GenerateRequest& request) {
  if (decode_.empty()) return NotConfigured("decode");
  if (request.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GenerateRequest::max_tokens must be >= 0, saw ", request.max_tokens));
  }
  absl::Status valid = request.sampling.Validate();
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("GenerateRequest::sampling: ", valid.message()));
  v1::GenerateRequest proto;
  proto.set_session_id(request.session_id);
  proto.set_prompt(request.prompt);
  proto.set_max_tokens(request.max_tokens);
  *proto.mutable_sampling() = ToProto(request.sampling);
  for (const std::string& s : request.stop) proto.add_stop(s);
  // The decode service appends the turn only after the answer is complete and before its final message, so an
  // attempt that died mid-stream did not append; the attempt that finishes is the only one that appends. (This
  // assumes a decode process does not die between appending and sending its final message.)
  proto.set_append_turn(request.append_turn);
  proto.set_add_bos(request.add_bos);
  std::unique_ptr<GenerateStream> stream(new GenerateStream(this, std::move(proto)));
  absl::Status started = stream->StartAttempt();
  if (!started.ok()) return started;
  return stream;
}

absl::StatusOr<GenerateResult> Client::Generate(const GenerateRequest& request,
                                                const std::function<void(const Piece&)>& on_piece) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<GenerateStream> stream, Generate(request));
  Piece piece;
  while (stream->Next(&piece)) on_piece(piece);
  LIVEKV_RETURN_IF_ERROR(stream->Finish());
  return stream->result();
}

// ---------------------------------------------------------------------------------------------------------------
// GenerateStream

Client::GenerateStream::GenerateStream(Client* client, v1::GenerateRequest request)
    : client_(client),
      request_(std::move(request)),
      address_(client->preferred_decode_.load() % client->decode_.size()),
      first_address_(address_),
      backoff_(client->options_.retry.initial_backoff),
      rng_(std::random_device{}()) {}

Client::GenerateStream::~GenerateStream() {
  if (reader_ != nullptr) EndAttempt(/*cancel=*/true).IgnoreError();
}

absl::Status Client::GenerateStream::StartAttempt() {
  grpc::ClientContext* context;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return absl::CancelledError("Generate cancelled by the caller");
    context_ = std::make_unique<grpc::ClientContext>();
    SetDeadline(context_.get(), client_->options_.timeout);
    context = context_.get();
  }
  // Outside the lock, so Cancel() never waits for the request to be sent (a context cancelled before its call
  // starts cancels the call as it starts).
  reader_ = client_->decode_[address_]->Generate(context, request_);
  ++attempts_;
  finished_ = false;
  received_ = false;
  replay_.BeginAttempt();
  return absl::OkStatus();
}

absl::Status Client::GenerateStream::EndAttempt(bool cancel) {
  if (cancel) {
    absl::MutexLock lock(&mu_);
    context_->TryCancel();
  }
  // Messages the caller will not read are dropped (after a cancel, Read returns false quickly).
  v1::GenerateResponse ignored;
  while (reader_->Read(&ignored)) {
  }
  const grpc::Status s = reader_->Finish();
  reader_.reset();
  {
    absl::MutexLock lock(&mu_);
    context_.reset();
  }
  return Annotate(FromGrpcStatus(s), "Generate", client_->options_.decode[address_]);
}

bool Client::GenerateStream::SleepUnlessCancelled(absl::Duration d) {
  mu_.LockWhenWithTimeout(absl::Condition(&cancelled_), d);
  const bool cancelled = cancelled_;
  mu_.Unlock();
  return !cancelled;
}

bool Client::GenerateStream::End(absl::Status status) {
  absl::MutexLock lock(&mu_);
  done_ = true;
  status_ = cancelled_ ? absl::CancelledError("Generate cancelled by the caller") : std::move(status);
  return false;
}

bool Client::GenerateStream::Next(Piece* piece) {
  const size_t num_addresses = client_->decode_.size();
  while (!done_) {
    if (reader_ == nullptr) {
      absl::Status s = StartAttempt();
      if (!s.ok()) return End(s);
    }
    v1::GenerateResponse message;
    if (reader_->Read(&message)) {
      if (!received_) {
        received_ = true;
        client_->preferred_decode_.store(address_);
      }
      Piece received{std::vector<int32_t>(message.token_ids().begin(), message.token_ids().end()), message.text()};
      absl::StatusOr<Piece> fresh = replay_.Accept(received);
      if (!fresh.ok()) {
        EndAttempt(/*cancel=*/true).IgnoreError();
        return End(absl::AbortedError(absl::StrCat("Generate (", client_->options_.decode[address_],
                                                   ") after failing over: ", fresh.status().message())));
      }
      if (message.finished()) {
        finished_ = true;
        result_.finish_reason = message.finish_reason();
        result_.timings = message.timings();
      }
      if (!fresh->ids.empty() || !fresh->text.empty()) {
        result_.ids.insert(result_.ids.end(), fresh->ids.begin(), fresh->ids.end());
        result_.text += fresh->text;
        *piece = std::move(*fresh);
        return true;
      }
      continue;
    }

    absl::Status s = EndAttempt(/*cancel=*/false);
    if (finished_ && (s.ok() || s.code() == absl::StatusCode::kUnavailable)) {
      // The answer is complete (and the turn appended, if asked) even if the connection broke after it.
      return End(replay_.CheckComplete());
    }
    if (s.ok()) {
      s = absl::UnavailableError(absl::StrCat("Generate (", client_->options_.decode[address_],
                                              "): the stream ended without its final message"));
    }
    if (s.code() != absl::StatusCode::kUnavailable) return End(s);
    if (attempts_ >= client_->options_.retry.max_attempts) {
      return End(absl::UnavailableError(absl::StrCat("Generate failed on every attempt (", attempts_, " over ",
                                                     num_addresses, " decode address(es)); last: ", s.message())));
    }
    // Fail over: the next address at once; back off when every address failed in this round (they may be
    // restarting).
    ++result_.retries;
    address_ = (address_ + 1) % num_addresses;
    if (address_ == first_address_) {
      std::uniform_real_distribution<double> jitter(0.5, 1.0);
      if (!SleepUnlessCancelled(backoff_ * jitter(rng_))) return End(absl::CancelledError("cancelled"));
      backoff_ = std::min(client_->options_.retry.max_backoff, backoff_ * client_->options_.retry.multiplier);
    }
  }
  return false;
}

absl::Status Client::GenerateStream::Finish() {
  Piece ignored;
  while (Next(&ignored)) {
  }
  return status_;
}

void Client::GenerateStream::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

}  // namespace livekv::sdk
