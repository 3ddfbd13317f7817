// File: client/sdk/client.h
//
// The C++ SDK of livekv: sessions on the KV store, appends through the prefill service, and streamed answers
// from the decode service.
//
//   ClientOptions options;
//   options.kvstore = "127.0.0.1:7101"; options.prefill = "127.0.0.1:7102"; options.decode = {"127.0.0.1:7103"};
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Connect(options));
//   SessionOptions so;  so.policy.budget = 512;
//   LIVEKV_ASSIGN_OR_RETURN(v1::Session session, client->CreateSession(so));
//   LIVEKV_RETURN_IF_ERROR(client->Append(session.session_id(), document, /*add_bos=*/true).status());
//   GenerateRequest req;  req.session_id = session.session_id();  req.prompt = "What is ...";
//   LIVEKV_ASSIGN_OR_RETURN(GenerateResult r, client->Generate(req, [](const Piece& p) { std::cout << p.text; }));
//
// Failure handling (../../shared/design/STYLE.md):
//  - Every RPC attempt has a deadline (ClientOptions::timeout); a peer that never answers ends in
//    DEADLINE_EXCEEDED.
//  - Unary calls are retried with back-off while the peer is UNAVAILABLE (restarting), never on another code.
//  - Generate fails over: when its stream ends in UNAVAILABLE (the decode process died, before or during the
//    answer), the same request is re-issued on the next decode address (or the same one, after back-off, for a
//    restarted process); the replay is checked against what was delivered and only new pieces are delivered
//    (client/sdk/replay.h). A replay that differs ends the call with ABORTED.
//  - Errors from the services keep their canonical codes; messages name the call and the address.
//
// Thread-safety: Client is thread-safe. A GenerateStream is used by one thread, except Cancel(), which any
// thread may call.
#ifndef LIVEKV_CLIENT_SDK_CLIENT_H_
#define LIVEKV_CLIENT_SDK_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/sdk/options.h"
#include "client/sdk/replay.h"
#include "proto/livekv/v1/decode.grpc.pb.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"
#include "proto/livekv/v1/prefill.grpc.pb.h"

namespace livekv::sdk {

class Client {
 public:
  // Validates the options and creates the channels. Connections are made lazily by the first call (so a client
  // can be created before the services are up); INVALID_ARGUMENT for a non-positive timeout or max_attempts.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Creates a session for the model in options.model_dir (its config.json gives the geometry) under
  // options.policy. INVALID_ARGUMENT for a policy the model cannot run; the store's codes otherwise.
  absl::StatusOr<v1::Session> CreateSession(const SessionOptions& options);
  absl::StatusOr<v1::Session> GetSession(const std::string& id);
  // Every tenant's sessions when `tenant` is empty.
  absl::StatusOr<std::vector<v1::Session>> ListSessions(const std::string& tenant = "");
  absl::Status DeleteSession(const std::string& id);

  // Prefills `text` into the session (through the prefill service) and appends its KV.
  absl::StatusOr<v1::AppendTextResponse> Append(const std::string& session_id, const std::string& text, bool add_bos);

  // A Generate call being streamed. Next() blocks for the next piece and returns false at the end; Finish()
  // then gives the call's status and result() the whole answer. Fails over like the callback form (the
  // caller sees only new pieces; Next() may block longer while a replay catches up).
  class GenerateStream {
   public:
    ~GenerateStream();  // cancels the call if it is still running
    GenerateStream(const GenerateStream&) = delete;
    GenerateStream& operator=(const GenerateStream&) = delete;

    // The next piece not delivered before. False at the end of the answer, on an error, or after Cancel().
    bool Next(Piece* piece);
    // The call's status. Reads (and drops) what Next() has not yet returned. CANCELLED after Cancel().
    absl::Status Finish();
    // Stops the call (the decode service stops generating). Any thread; Next() then returns false.
    void Cancel();
    // What was delivered so far; complete after Finish().
    const GenerateResult& result() const { return result_; }

   private:
    friend class Client;
    GenerateStream(Client* client, v1::GenerateRequest request);

    // Opens the call on decode_[address_]. CANCELLED when Cancel() came first.
    absl::Status StartAttempt();
    // Ends the open call (cancelling it first when `cancel`) and returns its status.
    absl::Status EndAttempt(bool cancel);
    // Waits `d`, or less when cancelled. False when cancelled.
    bool SleepUnlessCancelled(absl::Duration d);
    bool End(absl::Status status);

    Client* const client_;  // borrowed; must outlive the stream
    const v1::GenerateRequest request_;
    ReplayTracker replay_;
    GenerateResult result_;
    int attempts_ = 0;
    size_t address_;        // index into client_->decode_ of the current attempt
    size_t first_address_;  // of the current round over the addresses
    absl::Duration backoff_;
    std::minstd_rand rng_;   // back-off jitter
    bool finished_ = false;  // the current attempt sent its final message
    bool received_ = false;  // the current attempt sent something
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
    bool done_ = false;
    absl::Status status_;

    absl::Mutex mu_;
    std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mu_);
    bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  };

  // Starts streaming an answer. INVALID_ARGUMENT for bad sampling or max_tokens; FAILED_PRECONDITION without a
  // decode address. The Client must outlive the stream.
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(const GenerateRequest& request);

  // Streams an answer to `on_piece`, each piece exactly once, failing over between decode services as described
  // above, and returns the whole answer. With append_turn, only the attempt that finishes appends the turn.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request,
                                          const std::function<void(const Piece&)>& on_piece);

  // The KV store's counters.
  absl::StatusOr<v1::StatsResponse> Stats();

  const ClientOptions& options() const { return options_; }

 private:
  explicit Client(const ClientOptions& options);

  // Runs one unary RPC with a deadline per attempt, retried while UNAVAILABLE; annotates errors with `what`.
  template <typename Request, typename Response, typename Call>
  absl::StatusOr<Response> Unary(const std::string& what, const std::string& address, const Call& call,
                                 const Request& request);

  const ClientOptions options_;
  std::unique_ptr<v1::KvStore::Stub> kvstore_;
  std::unique_ptr<v1::Prefill::Stub> prefill_;
  std::vector<std::unique_ptr<v1::Decode::Stub>> decode_;
  // The decode address that last answered: later calls start there instead of at a dead first address.
  std::atomic<size_t> preferred_decode_{0};
};

}  // namespace livekv::sdk

#endif  // LIVEKV_CLIENT_SDK_CLIENT_H_
