#include "client/sdk/fake_services.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace livekv::sdk::testing {

void Faults::FailNext(std::vector<grpc::StatusCode> codes) {
  absl::MutexLock lock(&mu_);
  fail_.insert(fail_.end(), codes.begin(), codes.end());
}

void Faults::FailAfterNext(std::vector<grpc::StatusCode> codes) {
  absl::MutexLock lock(&mu_);
  fail_after_.insert(fail_after_.end(), codes.begin(), codes.end());
}

grpc::Status Faults::Leave(const std::string& method) {
  absl::MutexLock lock(&mu_);
  if (fail_after_.empty()) return grpc::Status::OK;
  const grpc::StatusCode code = fail_after_.front();
  fail_after_.pop_front();
  return grpc::Status(code, absl::StrCat("injected fault after ", method, " did its work"));
}

void Faults::set_hang(bool hang) {
  absl::MutexLock lock(&mu_);
  hang_ = hang;
}

int Faults::calls(const std::string& method) const {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(method);
  return it == calls_.end() ? 0 : it->second;
}

grpc::Status Faults::Enter(grpc::ServerContext* context, const std::string& method) {
  bool hang;
  {
    absl::MutexLock lock(&mu_);
    ++calls_[method];
    if (!fail_.empty()) {
      const grpc::StatusCode code = fail_.front();
      fail_.pop_front();
      return grpc::Status(code, absl::StrCat("injected fault in ", method));
    }
    hang = hang_;
  }
  if (hang) {
    while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
    return grpc::Status(grpc::StatusCode::CANCELLED, "hung until cancelled");
  }
  return grpc::Status::OK;
}

v1::CreateSessionRequest FakeKvStore::last_create() const {
  absl::MutexLock lock(&mu_);
  return last_create_;
}

grpc::Status FakeKvStore::CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                                        v1::Session* response) {
  grpc::Status s = faults_.Enter(context, "CreateSession");
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  last_create_ = *request;
  const std::string id = request->session_id().empty() ? absl::StrCat("fake-", next_id_++) : request->session_id();
  if (sessions_.count(id)) return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "session " + id + " exists");
  v1::Session& session = sessions_[id];
  session.set_session_id(id);
  session.set_tenant(request->tenant());
  session.set_model(request->model());
  *session.mutable_geometry() = request->geometry();
  *session.mutable_policy() = request->policy();
  *response = session;
  return faults_.Leave("CreateSession");
}

grpc::Status FakeKvStore::GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                                     v1::Session* response) {
  grpc::Status s = faults_.Enter(context, "GetSession");
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(request->session_id());
  if (it == sessions_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session \"" + request->session_id() + "\"");
  }
  *response = it->second;
  return grpc::Status::OK;
}

grpc::Status FakeKvStore::ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                                       v1::ListSessionsResponse* response) {
  grpc::Status s = faults_.Enter(context, "ListSessions");
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, session] : sessions_) {
    if (request->tenant().empty() || session.tenant() == request->tenant()) *response->add_sessions() = session;
  }
  return grpc::Status::OK;
}

grpc::Status FakeKvStore::DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                                        v1::DeleteSessionResponse*) {
  grpc::Status s = faults_.Enter(context, "DeleteSession");
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (sessions_.erase(request->session_id()) == 0) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session \"" + request->session_id() + "\"");
  }
  return grpc::Status::OK;
}

grpc::Status FakeKvStore::Stats(grpc::ServerContext* context, const v1::StatsRequest*, v1::StatsResponse* response) {
  grpc::Status s = faults_.Enter(context, "Stats");
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  response->set_sessions(static_cast<int64_t>(sessions_.size()));
  return grpc::Status::OK;
}

grpc::Status FakePrefill::AppendText(grpc::ServerContext* context, const v1::AppendTextRequest* request,
                                     v1::AppendTextResponse* response) {
  grpc::Status s = faults_.Enter(context, "AppendText");
  if (!s.ok()) return s;
  response->set_tokens_appended(static_cast<int64_t>(request->text().size()) + (request->add_bos() ? 1 : 0));
  response->set_session_tokens(response->tokens_appended());
  response->set_session_version(1);
  return grpc::Status::OK;
}

void FakeDecode::set_script(Script script) {
  absl::MutexLock lock(&mu_);
  script_ = std::move(script);
}

std::vector<v1::GenerateRequest> FakeDecode::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

int FakeDecode::pieces_sent() const {
  absl::MutexLock lock(&mu_);
  return pieces_sent_;
}

bool FakeDecode::WaitForPiecesSent(int n) const {
  absl::MutexLock lock(&mu_);
  auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pieces_sent_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(10));
}

grpc::Status FakeDecode::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                  grpc::ServerWriter<v1::GenerateResponse>* writer) {
  grpc::Status s = faults_.Enter(context, "Generate");
  if (!s.ok()) return s;
  Script script;
  {
    absl::MutexLock lock(&mu_);
    requests_.push_back(*request);
    script = script_;
  }
  v1::Timings timings;
  for (size_t i = 0; i < script.pieces.size(); ++i) {
    if (script.die_after >= 0 && static_cast<int>(i) == script.die_after) {
      if (script.die_hangs) {
        while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
        return grpc::Status(grpc::StatusCode::CANCELLED, "hung until cancelled");
      }
      return grpc::Status(script.die_code, "injected death after " + std::to_string(i) + " pieces");
    }
    v1::GenerateResponse piece;
    for (int32_t id : script.pieces[i].first) piece.add_token_ids(id);
    piece.set_text(script.pieces[i].second);
    if (!writer->Write(piece)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    absl::MutexLock lock(&mu_);
    ++pieces_sent_;
    timings.set_generated_tokens(timings.generated_tokens() + script.pieces[i].first.size());
  }
  v1::GenerateResponse last;
  last.set_finished(true);
  last.set_finish_reason(script.finish_reason);
  timings.set_prompt_tokens(static_cast<int64_t>(request->prompt().size()));
  timings.set_first_token_ms(1.5);
  *last.mutable_timings() = timings;
  writer->Write(last);
  return grpc::Status::OK;
}

std::vector<std::pair<std::vector<int32_t>, std::string>> MakePieces(const std::string& text, int32_t first_id) {
  std::vector<std::pair<std::vector<int32_t>, std::string>> pieces;
  for (size_t i = 0; i < text.size(); ++i) {
    pieces.push_back({{first_id + static_cast<int32_t>(i)}, text.substr(i, 1)});
  }
  return pieces;
}

int PickUnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace livekv::sdk::testing
