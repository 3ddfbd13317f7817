// Generate's streaming, cancellation and failover against fake decode services on 127.0.0.1: a stream that dies
// (an error, a process that goes away, a stream cut short) is re-issued on the next decode address or on the same
// one restarted, the replay is checked, and the caller sees each piece exactly once.
#include <thread>

#include "absl/time/clock.h"
#include "client/sdk/client.h"
#include "client/sdk/fake_services.h"
#include "common/rpc/server.h"
#include "gtest/gtest.h"

namespace livekv::sdk {
namespace {

using testing::FakeDecode;
using testing::MakePieces;

constexpr char kAnswer[] = "The answer is 42.";

FakeDecode::Script Full() {
  FakeDecode::Script s;
  s.pieces = MakePieces(kAnswer, 100);
  s.finish_reason = "eos";
  return s;
}

FakeDecode::Script DiesAfter(int n, grpc::StatusCode code = grpc::StatusCode::UNAVAILABLE) {
  FakeDecode::Script s = Full();
  s.die_after = n;
  s.die_code = code;
  return s;
}

struct Collected {
  std::vector<Piece> pieces;
  std::string text() const {
    std::string t;
    for (const Piece& p : pieces) t += p.text;
    return t;
  }
  std::vector<int32_t> ids() const {
    std::vector<int32_t> ids;
    for (const Piece& p : pieces) ids.insert(ids.end(), p.ids.begin(), p.ids.end());
    return ids;
  }
};

std::vector<int32_t> AnswerIds() {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < sizeof(kAnswer) - 1; ++i) ids.push_back(100 + static_cast<int32_t>(i));
  return ids;
}

class GenerateFailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_a_.Start("127.0.0.1:0", {&a_}).ok());
    ASSERT_TRUE(server_b_.Start("127.0.0.1:0", {&b_}).ok());
    options_.decode = {server_a_.address(), server_b_.address()};
    options_.timeout = absl::Seconds(10);
    options_.retry = RetryPolicy{4, absl::Milliseconds(10), absl::Milliseconds(50), 2.0};
    request_.session_id = "s1";
    request_.prompt = "What is the answer?";
    request_.max_tokens = 32;
    request_.append_turn = true;
  }

  std::unique_ptr<Client> NewClient() {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options_);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(c).value();
  }

  absl::StatusOr<GenerateResult> Run(Client* client, Collected* out) {
    return client->Generate(request_, [out](const Piece& p) { out->pieces.push_back(p); });
  }

  FakeDecode a_, b_;
  GrpcServer server_a_, server_b_;
  ClientOptions options_;
  GenerateRequest request_;
};

TEST_F(GenerateFailoverTest, StreamsAnAnswerWithoutFailures) {
  a_.set_script(Full());
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(got.text(), kAnswer);
  EXPECT_EQ(r->text, kAnswer);
  EXPECT_EQ(r->ids, AnswerIds());
  EXPECT_EQ(r->finish_reason, "eos");
  EXPECT_EQ(r->retries, 0);
  EXPECT_EQ(r->timings.first_token_ms(), 1.5);
  EXPECT_EQ(b_.calls(), 0);
  ASSERT_EQ(a_.requests().size(), 1u);
  const v1::GenerateRequest sent = a_.requests()[0];
  EXPECT_EQ(sent.session_id(), "s1");
  EXPECT_EQ(sent.prompt(), "What is the answer?");
  EXPECT_EQ(sent.max_tokens(), 32);
  EXPECT_TRUE(sent.append_turn());
}

TEST_F(GenerateFailoverTest, DeathMidStreamFailsOverToTheNextAddressAndDeliversEachPieceOnce) {
  a_.set_script(DiesAfter(3));
  b_.set_script(Full());
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(got.pieces.size(), sizeof(kAnswer) - 1);
  EXPECT_EQ(got.text(), kAnswer);
  EXPECT_EQ(got.ids(), AnswerIds());
  EXPECT_EQ(r->text, kAnswer);
  EXPECT_EQ(r->ids, AnswerIds());
  EXPECT_EQ(r->retries, 1);
  EXPECT_EQ(r->finish_reason, "eos");
  EXPECT_EQ(a_.calls(), 1);
  EXPECT_EQ(b_.calls(), 1);
  // The same request is re-issued (append_turn included: only the attempt that finishes appends).
  EXPECT_EQ(b_.requests()[0].SerializeAsString(), a_.requests()[0].SerializeAsString());
  // Later calls start at the address that answered.
  a_.set_script(Full());
  Collected again;
  ASSERT_TRUE(Run(client.get(), &again).ok());
  EXPECT_EQ(a_.calls(), 1);
  EXPECT_EQ(b_.calls(), 2);
}

TEST_F(GenerateFailoverTest, DeathBeforeTheFirstPieceFailsOver) {
  a_.faults().FailNext({grpc::StatusCode::UNAVAILABLE});
  a_.set_script(Full());
  b_.set_script(Full());
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(got.text(), kAnswer);
  EXPECT_EQ(r->retries, 1);
}

TEST_F(GenerateFailoverTest, AStreamCutShortIsRetried) {
  a_.set_script(DiesAfter(5, grpc::StatusCode::OK));  // ends "successfully" without its final message
  b_.set_script(Full());
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(got.text(), kAnswer);
  EXPECT_EQ(got.pieces.size(), sizeof(kAnswer) - 1);
  EXPECT_EQ(r->retries, 1);
}

TEST_F(GenerateFailoverTest, ReplayMismatchIsAborted) {
  a_.set_script(DiesAfter(3));
  FakeDecode::Script other = Full();
  other.pieces[1] = {{999}, "X"};  // a different token where the caller already has one
  b_.set_script(other);
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_NE(r.status().message().find("non-deterministic sampling cannot resume"), std::string::npos) << r.status();
  EXPECT_EQ(got.pieces.size(), 3u);
  EXPECT_EQ(got.text(), "The");
}

TEST_F(GenerateFailoverTest, ReplayThatEndsEarlyIsAborted) {
  a_.set_script(DiesAfter(6));
  FakeDecode::Script shorter = Full();
  shorter.pieces.resize(4);
  b_.set_script(shorter);
  auto client = NewClient();
  Collected got;
  EXPECT_EQ(Run(client.get(), &got).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(got.pieces.size(), 6u);
}

TEST_F(GenerateFailoverTest, OtherCodesAreNotFailedOver) {
  a_.set_script(DiesAfter(3, grpc::StatusCode::INTERNAL));
  b_.set_script(Full());
  auto client = NewClient();
  Collected got;
  EXPECT_EQ(Run(client.get(), &got).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(got.pieces.size(), 3u);
  a_.faults().FailNext({grpc::StatusCode::NOT_FOUND});
  EXPECT_EQ(Run(client.get(), &got).status().code(), absl::StatusCode::kNotFound);
  a_.faults().FailNext({grpc::StatusCode::RESOURCE_EXHAUSTED});
  EXPECT_EQ(Run(client.get(), &got).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b_.calls(), 0);
}

TEST_F(GenerateFailoverTest, GivesUpAfterMaxAttempts) {
  a_.faults().FailNext(std::vector<grpc::StatusCode>(10, grpc::StatusCode::UNAVAILABLE));
  b_.faults().FailNext(std::vector<grpc::StatusCode>(10, grpc::StatusCode::UNAVAILABLE));
  auto client = NewClient();
  Collected got;
  absl::StatusOr<GenerateResult> r = Run(client.get(), &got);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a_.calls() + b_.calls(), options_.retry.max_attempts);
  EXPECT_EQ(a_.calls(), 2);
}

TEST_F(GenerateFailoverTest, IteratorFormFailsOverToo) {
  a_.set_script(DiesAfter(4));
  b_.set_script(Full());
  auto client = NewClient();
  absl::StatusOr<std::unique_ptr<Client::GenerateStream>> stream = client->Generate(request_);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string text;
  int pieces = 0;
  Piece p;
  while ((*stream)->Next(&p)) {
    text += p.text;
    ++pieces;
  }
  EXPECT_TRUE((*stream)->Finish().ok()) << (*stream)->Finish();
  EXPECT_EQ(text, kAnswer);
  EXPECT_EQ(pieces, static_cast<int>(sizeof(kAnswer) - 1));
  EXPECT_EQ((*stream)->result().text, kAnswer);
  EXPECT_EQ((*stream)->result().retries, 1);
}

TEST_F(GenerateFailoverTest, CancelStopsTheStream) {
  FakeDecode::Script hangs = Full();
  hangs.die_after = 2;
  hangs.die_hangs = true;
  a_.set_script(hangs);
  auto client = NewClient();
  absl::StatusOr<std::unique_ptr<Client::GenerateStream>> stream = client->Generate(request_);
  ASSERT_TRUE(stream.ok());
  Piece p;
  ASSERT_TRUE((*stream)->Next(&p));
  ASSERT_TRUE((*stream)->Next(&p));
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (*stream)->Cancel();
  });
  const absl::Time start = absl::Now();
  EXPECT_FALSE((*stream)->Next(&p));  // blocked until the cancel
  canceller.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ((*stream)->Finish().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*stream)->result().text, "Th");
  EXPECT_EQ(b_.calls(), 0);  // a cancelled call is not failed over
}

TEST_F(GenerateFailoverTest, DestroyingAnUnfinishedStreamCancelsIt) {
  FakeDecode::Script hangs = Full();
  hangs.die_after = 1;
  hangs.die_hangs = true;
  a_.set_script(hangs);
  auto client = NewClient();
  {
    absl::StatusOr<std::unique_ptr<Client::GenerateStream>> stream = client->Generate(request_);
    ASSERT_TRUE(stream.ok());
    Piece p;
    ASSERT_TRUE((*stream)->Next(&p));
  }
  // The server saw the cancellation: its handler returned, so shutdown does not wait for it.
  const absl::Time start = absl::Now();
  server_a_.Shutdown(absl::Seconds(5));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(GenerateRestartTest, FailsOverToTheSameAddressOnceTheDecodeProcessRestarts) {
  const int port = testing::PickUnusedPort();
  ASSERT_GT(port, 0);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  FakeDecode first;
  FakeDecode::Script hangs = Full();
  hangs.die_after = 3;
  hangs.die_hangs = true;
  first.set_script(hangs);
  auto server = std::make_unique<GrpcServer>();
  ASSERT_TRUE(server->Start(address, {&first}).ok());

  ClientOptions options;
  options.decode = {address};
  options.timeout = absl::Seconds(10);
  options.retry = RetryPolicy{30, absl::Milliseconds(20), absl::Milliseconds(100), 2.0};
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  GenerateRequest request;
  request.session_id = "s1";
  request.prompt = "q";
  Collected got;
  absl::StatusOr<GenerateResult> result;
  std::thread caller([&] { result = (*client)->Generate(request, [&](const Piece& p) { got.pieces.push_back(p); }); });

  // The process "dies" mid-answer: its server goes away with the call open, and comes back on the same port.
  ASSERT_TRUE(first.WaitForPiecesSent(3));
  server->Shutdown(absl::ZeroDuration());
  server.reset();
  FakeDecode second;
  second.set_script(Full());
  GrpcServer restarted;
  ASSERT_TRUE(restarted.Start(address, {&second}).ok());
  caller.join();

  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(got.text(), kAnswer);
  EXPECT_EQ(got.ids(), AnswerIds());
  EXPECT_EQ(result->text, kAnswer);
  EXPECT_GE(result->retries, 1);
  EXPECT_EQ(second.calls(), 1);
}

}  // namespace
}  // namespace livekv::sdk
