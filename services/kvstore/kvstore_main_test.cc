// Smoke test of the livekv_kvstore binary: starts it on 127.0.0.1:0, checks health and one call, scrapes
// /metrics, sends SIGTERM and expects a clean exit.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/file.h"
#include "common/rpc/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

std::string Binary() {
  return JoinPath(JoinPath(std::getenv("TEST_SRCDIR"), "livekv"), "services/kvstore/livekv_kvstore");
}

// Waits for a port file the child writes; 0 on timeout.
int WaitForPort(const std::string& path, pid_t child) {
  for (int i = 0; i < 3000; ++i) {
    absl::StatusOr<std::string> text = ReadFileToString(path);
    int port = 0;
    if (text.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &port) && port > 0) return port;
    if (waitpid(child, nullptr, WNOHANG) == child) return 0;  // it died
    absl::SleepFor(absl::Milliseconds(10));
  }
  return 0;
}

// GET http://127.0.0.1:port/path; the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) response.append(buf, n);
  close(fd);
  return response;
}

TEST(KvStoreMainTest, ServesHealthAndCallsThenExitsCleanlyOnSigterm) {
  const std::string dir = std::getenv("TEST_TMPDIR");
  const std::string port_file = JoinPath(dir, "kv.port");
  const std::string metrics_port_file = JoinPath(dir, "kv.metrics_port");
  const std::string binary = Binary();
  std::vector<std::string> args = {binary,
                                   "--listen=127.0.0.1:0",
                                   "--port_file=" + port_file,
                                   "--metrics_listen=127.0.0.1:0",
                                   "--metrics_port_file=" + metrics_port_file,
                                   "--pool_bytes=67108864",
                                   "--reap_interval_ms=50",
                                   "--shutdown_grace_ms=2000"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  const int port = WaitForPort(port_file, child);
  ASSERT_GT(port, 0) << "the server did not write its port";
  const std::string address = absl::StrCat("127.0.0.1:", port);
  std::shared_ptr<grpc::Channel> channel = MakeChannel(address);

  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext hc;
  SetDeadline(&hc, absl::Seconds(10));
  grpc::health::v1::HealthCheckRequest hreq;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&hc, hreq, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto kv = v1::KvStore::NewStub(channel);
  grpc::ClientContext gc;
  SetDeadline(&gc, absl::Seconds(10));
  v1::GetSessionRequest greq;
  greq.set_session_id("no-such-session");
  v1::Session session;
  const grpc::Status got = kv->GetSession(&gc, greq, &session);
  EXPECT_EQ(got.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(got.error_message(), HasSubstr("no-such-session"));

  const int metrics_port = WaitForPort(metrics_port_file, child);
  ASSERT_GT(metrics_port, 0);
  const std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_THAT(metrics, HasSubstr("200 OK"));
  EXPECT_THAT(metrics, HasSubstr("livekv_requests_total{code=\"5\",method=\"GetSession\",service=\"kvstore\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("livekv_sessions{service=\"kvstore\"} 0"));

  // Move a few MiB each way (large messages once made gRPC's own shutdown linger).
  {
    v1::CreateSessionRequest create;
    create.set_session_id("big");
    v1::KvGeometry* g = create.mutable_geometry();
    g->set_num_layers(2);
    g->set_num_kv_heads(2);
    g->set_head_dim(128);
    g->set_page_tokens(32);
    g->set_dtype(v1::DTYPE_F32);
    g->set_sink_tokens(32);
    grpc::ClientContext cc;
    SetDeadline(&cc, absl::Seconds(10));
    ASSERT_TRUE(kv->CreateSession(&cc, create, &session).ok());
    const int64_t n = 4096;
    const std::string rows(n * 2 * 128 * 4, '\x01');
    v1::BeginAppendRequest begin;
    begin.set_session_id("big");
    begin.set_num_tokens(n);
    v1::BeginAppendResponse begun;
    grpc::ClientContext bc;
    SetDeadline(&bc, absl::Seconds(10));
    ASSERT_TRUE(kv->BeginAppend(&bc, begin, &begun).ok());
    grpc::ClientContext ac;
    SetDeadline(&ac, absl::Seconds(30));
    v1::AppendKvResponse appended;
    auto writer = kv->AppendKv(&ac, &appended);
    for (int layer = 0; layer < 2; ++layer) {
      v1::AppendKvRequest m;
      m.set_append_id(begun.append_id());
      m.mutable_rows()->set_layer(layer);
      m.mutable_rows()->set_rows(n);
      m.mutable_rows()->set_keys(rows);
      m.mutable_rows()->set_values(rows);
      ASSERT_TRUE(writer->Write(m));
    }
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
    v1::CommitAppendRequest commit;
    commit.set_append_id(begun.append_id());
    v1::CommitAppendResponse committed;
    grpc::ClientContext mc;
    SetDeadline(&mc, absl::Seconds(10));
    ASSERT_TRUE(kv->CommitAppend(&mc, commit, &committed).ok());
    EXPECT_EQ(committed.session().num_tokens(), n);
    v1::AcquireLeaseRequest acquire;
    acquire.set_session_id("big");
    v1::Lease lease;
    grpc::ClientContext lc;
    SetDeadline(&lc, absl::Seconds(10));
    ASSERT_TRUE(kv->AcquireLease(&lc, acquire, &lease).ok());
    v1::RecallRequest recall;
    recall.set_session_id("big");
    recall.set_lease_id(lease.lease_id());
    for (int layer = 0; layer < 2; ++layer) {
      for (int head = 0; head < 2; ++head) {
        v1::BlockSet* set = recall.add_blocks();
        set->set_layer(layer);
        set->set_kv_head(head);
        for (int64_t p = 32; p < n; p += 32) set->add_pages(p);
      }
    }
    grpc::ClientContext rc;
    SetDeadline(&rc, absl::Seconds(30));
    auto reader = kv->Recall(&rc, recall);
    v1::RecallChunk chunk;
    int64_t received = 0;
    while (reader->Read(&chunk)) received += chunk.data().size();
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(received, 4 * 127 * 32 * 1024);
  }

  const absl::Time sent = absl::Now();
  ASSERT_EQ(kill(child, SIGTERM), 0);
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 2000 && done == 0; ++i) {
    done = waitpid(child, &status, WNOHANG);
    if (done == 0) absl::SleepFor(absl::Milliseconds(10));
  }
  if (done == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "livekv_kvstore did not exit within 20 s of SIGTERM";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_LT(absl::Now() - sent, absl::Seconds(5)) << "slow exit after SIGTERM";
}

TEST(KvStoreMainTest, RejectsBadFlags) {
  const std::string binary = Binary();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl(binary.c_str(), binary.c_str(), "--listen=127.0.0.1:0", "--pool_bytes=0", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
}

}  // namespace
}  // namespace livekv
