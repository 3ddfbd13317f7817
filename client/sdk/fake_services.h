// File: client/sdk/fake_services.h
//
// Fake KvStore, Prefill and Decode services for tests of the SDK and its users, with programmable faults: a
// queue of codes the next calls fail with, a "hang" mode in which calls never answer (until cancelled or past
// their deadline), and for Decode a script of pieces and the point where the stream dies.
//
//   FakeKvStore store;
//   GrpcServer server;
//   ASSERT_TRUE(server.Start("127.0.0.1:0", {&store}).ok());
//   store.faults().FailNext({grpc::StatusCode::UNAVAILABLE});
//
// Thread-safety: thread-safe.
#ifndef LIVEKV_CLIENT_SDK_FAKE_SERVICES_H_
#define LIVEKV_CLIENT_SDK_FAKE_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "proto/livekv/v1/decode.grpc.pb.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"
#include "proto/livekv/v1/prefill.grpc.pb.h"

namespace livekv::sdk::testing {

// Faults of one fake service, shared by its methods.
class Faults {
 public:
  // The next calls (of any method) fail with these codes, in order; later calls answer normally.
  void FailNext(std::vector<grpc::StatusCode> codes);
  // The next calls (of any method that supports it: CreateSession) do their work and then fail with these codes,
  // as if the answer were lost.
  void FailAfterNext(std::vector<grpc::StatusCode> codes);
  // While set, calls block until they are cancelled (by the client, their deadline, or server shutdown).
  void set_hang(bool hang);
  // Calls that reached the service, per method name ("GetSession").
  int calls(const std::string& method) const;

  // For the fakes: counts the call, hangs if asked, and returns the status to fail with (OK: answer).
  grpc::Status Enter(grpc::ServerContext* context, const std::string& method);
  // For the fakes, after the work: the status to fail with (OK: answer).
  grpc::Status Leave(const std::string& method);

 private:
  mutable absl::Mutex mu_;
  std::deque<grpc::StatusCode> fail_ ABSL_GUARDED_BY(mu_);
  std::deque<grpc::StatusCode> fail_after_ ABSL_GUARDED_BY(mu_);
  bool hang_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

// Keeps sessions in a map.
class FakeKvStore final : public v1::KvStore::Service {
 public:
  Faults& faults() { return faults_; }
  v1::CreateSessionRequest last_create() const;

  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                             v1::Session* response) override;
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;

 private:
  Faults faults_;
  mutable absl::Mutex mu_;
  std::map<std::string, v1::Session> sessions_ ABSL_GUARDED_BY(mu_);
  v1::CreateSessionRequest last_create_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// Answers with tokens_appended = the text's length in bytes.
class FakePrefill final : public v1::Prefill::Service {
 public:
  Faults& faults() { return faults_; }
  grpc::Status AppendText(grpc::ServerContext* context, const v1::AppendTextRequest* request,
                          v1::AppendTextResponse* response) override;

 private:
  Faults faults_;
};

// Streams a script of pieces, then a final message with the finish reason and timings.
class FakeDecode final : public v1::Decode::Service {
 public:
  struct Script {
    std::vector<std::pair<std::vector<int32_t>, std::string>> pieces;  // token ids and their text
    std::string finish_reason = "length";
    // After this many pieces the stream dies: with `die_code` (UNAVAILABLE: as if the process died), or, when
    // die_hangs, by hanging until cancelled (the test then shuts the server down). -1: never.
    int die_after = -1;
    grpc::StatusCode die_code = grpc::StatusCode::UNAVAILABLE;
    bool die_hangs = false;
  };

  void set_script(Script script);
  Faults& faults() { return faults_; }
  int calls() const { return faults_.calls("Generate"); }
  std::vector<v1::GenerateRequest> requests() const;
  // Pieces written to clients, summed over calls.
  int pieces_sent() const;
  // Blocks until a call has written `n` pieces in total (or 10 s passed); false on timeout.
  bool WaitForPiecesSent(int n) const;

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

 private:
  Faults faults_;
  mutable absl::Mutex mu_;
  Script script_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
  int pieces_sent_ ABSL_GUARDED_BY(mu_) = 0;
};

// The pieces of a deterministic answer, e.g. {{{10}, "a"}, {{11}, "b"}, ...} for "ab...".
std::vector<std::pair<std::vector<int32_t>, std::string>> MakePieces(const std::string& text, int32_t first_id);

// A port nothing listens on now (bound and released), for servers a test starts late.
int PickUnusedPort();

}  // namespace livekv::sdk::testing

#endif  // LIVEKV_CLIENT_SDK_FAKE_SERVICES_H_
