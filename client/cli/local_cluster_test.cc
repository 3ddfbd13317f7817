// LocalCluster with the real service binaries (data dependencies of this test): they start on 127.0.0.1:0, answer
// health checks, serve the SDK end to end, and exit 0 on SIGTERM.
#include "client/cli/local_cluster.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/sdk/client.h"
#include "common/file.h"
#include "common/rpc/client.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace livekv::cli {
namespace {

LocalClusterOptions SmallCluster() {
  LocalClusterOptions o;
  o.threads = 2;
  o.kvstore_flags = {"--pool_bytes=268435456"};
  return o;
}

void ExpectServing(const LocalService& s) {
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(s.address));
  grpc::ClientContext context;
  SetDeadline(&context, absl::Seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  ASSERT_TRUE(status.ok()) << s.name << ": " << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << s.name;
}

TEST(LocalClusterTest, StartsServesAndStopsCleanly) {
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(SmallCluster());
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string dir = (*cluster)->dir();
  ASSERT_EQ((*cluster)->services().size(), 3u);
  for (const LocalService& s : (*cluster)->services()) {
    EXPECT_GT(s.port, 0) << s.name;
    EXPECT_GT(s.metrics_port, 0) << s.name;
    EXPECT_GT(s.pid, 0) << s.name;
    ExpectServing(s);
  }
  EXPECT_TRUE((*cluster)->CheckAlive().ok());

  // Other commands find the services through the port files.
  absl::StatusOr<ClusterAddresses> addresses = ReadClusterAddresses(dir);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_EQ(addresses->kvstore, (*cluster)->kvstore().address);
  EXPECT_EQ(addresses->prefill, (*cluster)->prefill().address);
  EXPECT_EQ(addresses->decode, std::vector<std::string>{(*cluster)->decode()[0]->address});

  // The SDK end to end: a session, an append through prefill, an answer from decode.
  sdk::ClientOptions options = (*cluster)->client_options();
  options.timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<sdk::Client>> client = sdk::Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  sdk::SessionOptions so;
  so.policy.kind = PolicyKind::kFull;
  absl::StatusOr<v1::Session> session = (*client)->CreateSession(so);
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<v1::AppendTextResponse> appended = (*client)->Append(
      session->session_id(), "The code of the red door is 4721. The code of the blue door is 9035. ", true);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_GT(appended->tokens_appended(), 0);
  sdk::GenerateRequest request;
  request.session_id = session->session_id();
  request.prompt = "What is the code of the red door?";
  request.max_tokens = 8;
  int pieces = 0;
  absl::StatusOr<sdk::GenerateResult> answer = (*client)->Generate(request, [&](const sdk::Piece&) { ++pieces; });
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_GT(pieces, 0);
  EXPECT_FALSE(answer->ids.empty());
  EXPECT_GT(answer->timings.prompt_tokens(), 0);
  EXPECT_EQ(answer->retries, 0);
  EXPECT_EQ((*client)->GetSession("no-such-session").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*client)->DeleteSession(session->session_id()).ok());
  client->reset();  // a service waits out its shutdown grace while a client holds a connection open

  const absl::Status stopped = (*cluster)->Stop();
  EXPECT_TRUE(stopped.ok()) << stopped;
  for (const LocalService& s : (*cluster)->services()) {
    EXPECT_TRUE(s.exited) << s.name;
    EXPECT_TRUE(WIFEXITED(s.exit_status) && WEXITSTATUS(s.exit_status) == 0) << s.name << " " << s.exit_status;
  }
  EXPECT_FALSE(FileExists(dir)) << "a clean stop removes the temporary directory";
}

TEST(LocalClusterTest, GenerateFailsOverWhenADecodeProcessDies) {
  LocalClusterOptions o = SmallCluster();
  o.num_decode = 2;
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(o);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ASSERT_EQ((*cluster)->decode().size(), 2u);
  sdk::ClientOptions options = (*cluster)->client_options();
  options.timeout = absl::Seconds(30);
  auto client = sdk::Client::Connect(options);
  ASSERT_TRUE(client.ok());
  sdk::SessionOptions so;
  so.policy.kind = PolicyKind::kFull;
  absl::StatusOr<v1::Session> session = (*client)->CreateSession(so);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*client)->Append(session->session_id(), "A long time ago the key was 31337. ", true).ok());
  sdk::GenerateRequest request;
  request.session_id = session->session_id();
  request.prompt = "What is the key?";
  request.max_tokens = 6;
  absl::StatusOr<sdk::GenerateResult> reference = (*client)->Generate(request, [](const sdk::Piece&) {});
  ASSERT_TRUE(reference.ok()) << reference.status();

  // The first decode process dies; the same request is answered by the second, identically.
  ASSERT_TRUE((*cluster)->Kill("decode", SIGKILL).ok());
  std::string streamed;
  absl::StatusOr<sdk::GenerateResult> answer =
      (*client)->Generate(request, [&](const sdk::Piece& p) { streamed += p.text; });
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->retries, 1);
  EXPECT_EQ(answer->ids, reference->ids);
  EXPECT_EQ(streamed, reference->text);

  // Stop reports the killed process and stops the rest cleanly.
  client->reset();
  const absl::Status stopped = (*cluster)->Stop();
  EXPECT_EQ(stopped.code(), absl::StatusCode::kInternal);
  EXPECT_NE(stopped.message().find("decode was killed by signal 9"), std::string::npos) << stopped;
  for (const LocalService& s : (*cluster)->services()) {
    if (s.name == "decode") continue;
    EXPECT_TRUE(WIFEXITED(s.exit_status) && WEXITSTATUS(s.exit_status) == 0) << s.name;
  }
}

TEST(FindServiceBinaryTest, NotFoundListsWhereItLooked) {
  absl::StatusOr<std::string> b = FindServiceBinary("kvstore", "/nonexistent/dir");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(b.status().message().find("/nonexistent/dir/livekv_kvstore"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("/nonexistent/dir/services/kvstore/livekv_kvstore"), std::string::npos);
}

TEST(FindServiceBinaryTest, FindsTheBinariesInTheRunfiles) {
  for (const char* service : {"kvstore", "prefill", "decode"}) {
    absl::StatusOr<std::string> b = FindServiceBinary(service);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_NE(b->find(std::string("livekv_") + service), std::string::npos);
  }
}

TEST(LocalClusterTest, StartFailsClearlyWithoutBinaries) {
  LocalClusterOptions o;
  o.services_dir = "/nonexistent/dir";
  EXPECT_EQ(LocalCluster::Start(o).status().code(), absl::StatusCode::kNotFound);
}

TEST(LocalClusterTest, AServiceThatExitsEarlyIsReportedWithItsLog) {
  LocalClusterOptions o = SmallCluster();
  o.prefill_flags = {"--model=models/no-such-model"};  // the later flag wins
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(o);
  EXPECT_EQ(cluster.status().code(), absl::StatusCode::kFailedPrecondition) << cluster.status();
  EXPECT_NE(cluster.status().message().find("prefill.log"), std::string::npos) << cluster.status();
}

TEST(ReadClusterAddressesTest, MissingPortFileIsNotFound) {
  const char* tmp = getenv("TEST_TMPDIR");
  const std::string dir = JoinPath(tmp != nullptr ? tmp : "/tmp", "empty-cluster-dir");
  ASSERT_TRUE(MakeDirectories(dir).ok());
  absl::StatusOr<ClusterAddresses> a = ReadClusterAddresses(dir);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(a.status().message().find("kvstore.port"), std::string::npos) << a.status();
}

}  // namespace
}  // namespace livekv::cli
