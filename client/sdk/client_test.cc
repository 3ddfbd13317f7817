// The SDK's unary calls against fake services on 127.0.0.1: retries only on UNAVAILABLE, a deadline on every
// call, idempotent session creation, and the requests it sends.
#include "client/sdk/client.h"

#include <thread>

#include "absl/time/clock.h"
#include "client/sdk/fake_services.h"
#include "common/rpc/server.h"
#include "gtest/gtest.h"

namespace livekv::sdk {
namespace {

using testing::FakeDecode;
using testing::FakeKvStore;
using testing::FakePrefill;

RetryPolicy FastRetry(int attempts) {
  return RetryPolicy{attempts, absl::Milliseconds(10), absl::Milliseconds(50), 2.0};
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kvstore_server_.Start("127.0.0.1:0", {&kvstore_}).ok());
    ASSERT_TRUE(prefill_server_.Start("127.0.0.1:0", {&prefill_}).ok());
    ASSERT_TRUE(decode_server_.Start("127.0.0.1:0", {&decode_}).ok());
    options_.kvstore = kvstore_server_.address();
    options_.prefill = prefill_server_.address();
    options_.decode = {decode_server_.address()};
    options_.timeout = absl::Seconds(10);
    options_.retry = FastRetry(4);
  }

  std::unique_ptr<Client> NewClient() {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options_);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(c).value();
  }

  FakeKvStore kvstore_;
  FakePrefill prefill_;
  FakeDecode decode_;
  GrpcServer kvstore_server_, prefill_server_, decode_server_;
  ClientOptions options_;
};

TEST_F(ClientTest, CreateSessionSendsTheModelsGeometryAndPolicy) {
  auto client = NewClient();
  SessionOptions so;
  so.model_dir = "models/tiny";
  so.policy.budget = 512;
  so.tenant = "acme";
  so.ttl = absl::Minutes(5);
  absl::StatusOr<v1::Session> session = client->CreateSession(so);
  ASSERT_TRUE(session.ok()) << session.status();
  const v1::CreateSessionRequest sent = kvstore_.last_create();
  EXPECT_EQ(sent.model(), "tiny");
  EXPECT_EQ(sent.tenant(), "acme");
  EXPECT_EQ(sent.ttl_seconds(), 300);
  EXPECT_EQ(sent.session_id().size(), 16u);  // picked by the client
  EXPECT_EQ(session->session_id(), sent.session_id());
  EXPECT_EQ(sent.geometry().num_layers(), 4);
  EXPECT_EQ(sent.geometry().num_kv_heads(), 2);
  EXPECT_EQ(sent.geometry().head_dim(), 32);
  EXPECT_EQ(sent.geometry().page_tokens(), 32);
  EXPECT_EQ(sent.geometry().dtype(), v1::DTYPE_F32);
  EXPECT_EQ(sent.geometry().sink_tokens(), 16);
  EXPECT_EQ(sent.policy().kind(), v1::POLICY_CLUSTERKV);
  EXPECT_EQ(sent.policy().budget(), 512);
}

TEST_F(ClientTest, CreateSessionKeepsAGivenIdAndModelName) {
  auto client = NewClient();
  SessionOptions so;
  so.session_id = "mine";
  so.model_name = "tiny-v2";
  absl::StatusOr<v1::Session> session = client->CreateSession(so);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->session_id(), "mine");
  EXPECT_EQ(kvstore_.last_create().model(), "tiny-v2");
  EXPECT_EQ(client->CreateSession(so).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(ClientTest, CreateSessionRetryAfterALostAnswerReturnsTheCreatedSession) {
  auto client = NewClient();
  // The store creates the session but the answer is lost; the retry sees ALREADY_EXISTS for the client's own id.
  kvstore_.faults().FailAfterNext({grpc::StatusCode::UNAVAILABLE});
  absl::StatusOr<v1::Session> session = client->CreateSession(SessionOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(kvstore_.faults().calls("CreateSession"), 2);
  EXPECT_EQ(kvstore_.faults().calls("GetSession"), 1);
  absl::StatusOr<std::vector<v1::Session>> all = client->ListSessions();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);
}

TEST_F(ClientTest, CreateSessionRejectsABadPolicyBeforeCallingTheStore) {
  auto client = NewClient();
  SessionOptions so;
  so.policy.budget = 8;  // less than sink + window
  EXPECT_EQ(client->CreateSession(so).status().code(), absl::StatusCode::kInvalidArgument);
  so = SessionOptions();
  so.model_dir = "models/no-such-model";
  EXPECT_EQ(client->CreateSession(so).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kvstore_.faults().calls("CreateSession"), 0);
}

TEST_F(ClientTest, SessionLifecycle) {
  auto client = NewClient();
  SessionOptions a, b;
  a.tenant = "a";
  b.tenant = "b";
  absl::StatusOr<v1::Session> sa = client->CreateSession(a);
  ASSERT_TRUE(sa.ok()) << sa.status();
  ASSERT_TRUE(client->CreateSession(b).ok());
  absl::StatusOr<std::vector<v1::Session>> listed = client->ListSessions("a");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].session_id(), sa->session_id());
  EXPECT_EQ(client->ListSessions()->size(), 2u);
  absl::StatusOr<v1::Session> got = client->GetSession(sa->session_id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tenant(), "a");
  EXPECT_TRUE(client->DeleteSession(sa->session_id()).ok());
  EXPECT_EQ(client->GetSession(sa->session_id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->DeleteSession(sa->session_id()).code(), absl::StatusCode::kNotFound);
  absl::StatusOr<v1::StatsResponse> stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->sessions(), 1);
}

TEST_F(ClientTest, AppendSendsTheTextAndAnswers) {
  auto client = NewClient();
  absl::StatusOr<v1::AppendTextResponse> r = client->Append("s", "hello", /*add_bos=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens_appended(), 6);
}

TEST_F(ClientTest, RetriesUnavailableFromTheServer) {
  auto client = NewClient();
  ASSERT_TRUE(client->CreateSession(SessionOptions()).ok());
  kvstore_.faults().FailNext({grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::UNAVAILABLE});
  absl::StatusOr<v1::StatsResponse> stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(kvstore_.faults().calls("Stats"), 3);
  prefill_.faults().FailNext({grpc::StatusCode::UNAVAILABLE});
  EXPECT_TRUE(client->Append("s", "x", false).ok());
  EXPECT_EQ(prefill_.faults().calls("AppendText"), 2);
}

TEST_F(ClientTest, GivesUpAfterMaxAttempts) {
  options_.retry = FastRetry(3);
  auto client = NewClient();
  kvstore_.faults().FailNext(std::vector<grpc::StatusCode>(10, grpc::StatusCode::UNAVAILABLE));
  absl::StatusOr<v1::Session> s = client->GetSession("x");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(kvstore_.faults().calls("GetSession"), 3);
}

TEST_F(ClientTest, NeverRetriesOtherCodes) {
  auto client = NewClient();
  int expected_calls = 0;
  for (grpc::StatusCode code :
       {grpc::StatusCode::NOT_FOUND, grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::FAILED_PRECONDITION,
        grpc::StatusCode::ABORTED, grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::INTERNAL,
        grpc::StatusCode::PERMISSION_DENIED}) {
    kvstore_.faults().FailNext({code});
    absl::StatusOr<v1::StatsResponse> r = client->Stats();
    EXPECT_EQ(static_cast<int>(r.status().code()), static_cast<int>(code));
    EXPECT_NE(r.status().message().find("injected fault"), std::string::npos) << r.status();
    EXPECT_EQ(kvstore_.faults().calls("Stats"), ++expected_calls) << "retried code " << code;
  }
  prefill_.faults().FailNext({grpc::StatusCode::RESOURCE_EXHAUSTED});
  EXPECT_EQ(client->Append("s", "x", false).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(prefill_.faults().calls("AppendText"), 1);
}

TEST_F(ClientTest, EveryCallHasADeadline) {
  options_.timeout = absl::Milliseconds(300);
  auto client = NewClient();
  kvstore_.faults().set_hang(true);
  prefill_.faults().set_hang(true);
  decode_.faults().set_hang(true);
  auto expect_deadline = [](const char* what, const std::function<absl::Status()>& call) {
    const absl::Time start = absl::Now();
    const absl::Status s = call();
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << what << ": " << s;
    EXPECT_GE(took, absl::Milliseconds(250)) << what;
    EXPECT_LT(took, absl::Seconds(3)) << what;
  };
  expect_deadline("CreateSession", [&] { return client->CreateSession(SessionOptions()).status(); });
  expect_deadline("GetSession", [&] { return client->GetSession("x").status(); });
  expect_deadline("ListSessions", [&] { return client->ListSessions().status(); });
  expect_deadline("DeleteSession", [&] { return client->DeleteSession("x"); });
  expect_deadline("Stats", [&] { return client->Stats().status(); });
  expect_deadline("Append", [&] { return client->Append("x", "text", false).status(); });
  expect_deadline("Generate", [&] {
    GenerateRequest req;
    req.prompt = "q";
    return client->Generate(req, [](const Piece&) {}).status();
  });
  // DEADLINE_EXCEEDED is not retried.
  EXPECT_EQ(kvstore_.faults().calls("Stats"), 1);
  EXPECT_EQ(decode_.calls(), 1);
}

TEST(ClientRetryTest, UnaryCallSucceedsOnceTheServerComesUp) {
  const int port = testing::PickUnusedPort();
  ASSERT_GT(port, 0);
  ClientOptions options;
  options.kvstore = "127.0.0.1:" + std::to_string(port);
  options.timeout = absl::Seconds(5);
  options.retry = RetryPolicy{60, absl::Milliseconds(20), absl::Milliseconds(100), 2.0};
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  FakeKvStore store;
  GrpcServer server;
  const absl::Duration late = absl::Milliseconds(500);
  std::thread starter([&] {
    absl::SleepFor(late);
    ASSERT_TRUE(server.Start(options.kvstore, {&store}).ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::StatsResponse> stats = (*client)->Stats();
  const absl::Duration took = absl::Now() - start;
  starter.join();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GE(took, late);
  EXPECT_EQ(store.faults().calls("Stats"), 1);
}

TEST(ClientRetryTest, UnavailableWhenNothingListens) {
  ClientOptions options;
  options.kvstore = "127.0.0.1:" + std::to_string(testing::PickUnusedPort());
  options.retry = FastRetry(3);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  absl::Status s = (*client)->GetSession("x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find(options.kvstore), std::string::npos) << s;
}

TEST(ClientConnectTest, ValidatesOptions) {
  ClientOptions options;
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.retry.max_attempts = 0;
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.decode = {""};
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientConnectTest, UnconfiguredServicesAreFailedPrecondition) {
  ClientOptions options;
  options.kvstore = "127.0.0.1:1";
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Append("s", "x", false).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*client)->Generate(GenerateRequest()).status().code(), absl::StatusCode::kFailedPrecondition);
  options.kvstore.clear();
  client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Stats().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace livekv::sdk
