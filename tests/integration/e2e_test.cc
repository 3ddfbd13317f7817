// The three services end to end over loopback gRPC: answers equal the in-process engine's, bad input gets the
// right code on every RPC, appends are ordered, and cancelled generations leave nothing behind.
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/allocator.h"
#include "common/rpc/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/policy_kv_context.h"
#include "models/eval_set.h"
#include "services/common/convert.h"
#include "tests/integration/in_process_cluster.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

class E2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = InProcessCluster::Start().value().release(); }
  static void TearDownTestSuite() { delete cluster_; }

  // The same work in one process: prefill the document (chunks of 256, as the prefill service), end the input
  // (the policy's clustering), prefill the question, decode greedily.
  static std::vector<int32_t> InProcessAnswer(const PolicyOptions& policy, const std::vector<int32_t>& document,
                                              const std::vector<int32_t>& question, int max_tokens) {
    const LoadedModel& m = cluster_->model();
    HostAllocator host;
    auto pool = CreateKvPagePool(m.config, policy, document.size() + question.size() + max_tokens + 1, &host).value();
    auto kv = PolicyKvContext::Create(m.config, policy, pool.get(), cluster_->reference_backend().pool()).value();
    kv->set_sparse_prefill(false);  // the document densely, as the prefill service appends it
    std::vector<float> logits;
    for (size_t b = 0; b < document.size(); b += 256) {
      const size_t len = std::min<size_t>(256, document.size() - b);
      EXPECT_TRUE(m.transformer->Forward(absl::MakeConstSpan(document).subspan(b, len), kv.get(), false, &logits).ok());
    }
    EXPECT_TRUE(kv->FinishAppend().ok());
    kv->set_sparse_prefill(policy.sparse_prefill);  // the question as the session's policy says
    EXPECT_TRUE(m.transformer->Forward(question, kv.get(), false, &logits).ok());
    std::vector<int32_t> out;
    for (int i = 0; i < max_tokens; ++i) {
      const int32_t t = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (t == m.config.eos_token_ids[0]) break;
      out.push_back(t);
      EXPECT_TRUE(m.transformer->Forward({&t, 1}, kv.get(), false, &logits).ok());
    }
    return out;
  }

  struct Answer {
    grpc::Status status;
    std::vector<int32_t> ids;
    std::string text;
    v1::GenerateResponse last;
  };

  static Answer Ask(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(120));
    auto reader = cluster_->decode().Generate(&ctx, req);
    Answer a;
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      a.ids.insert(a.ids.end(), r.token_ids().begin(), r.token_ids().end());
      a.text += r.text();
      if (r.finished()) a.last = r;
    }
    a.status = reader->Finish();
    return a;
  }

  static grpc::Status Append(const std::string& session, const std::string& text, bool bos,
                             v1::AppendTextResponse* out = nullptr) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(120));
    v1::AppendTextRequest req;
    req.set_session_id(session);
    req.set_text(text);
    req.set_add_bos(bos);
    v1::AppendTextResponse resp;
    return cluster_->prefill().AppendText(&ctx, req, out != nullptr ? out : &resp);
  }

  static InProcessCluster* cluster_;
};

InProcessCluster* E2eTest::cluster_ = nullptr;

TEST_F(E2eTest, AnswersEqualTheInProcessEngineTokenForToken) {
  const Tokenizer& tok = *cluster_->model().tokenizer;
  struct Case {
    PolicyKind kind;
    bool sparse_prefill;
    bool speculative = false;
    float tau = 0.8f;
  };
  for (const Case c : {Case{PolicyKind::kClusterKv, false}, Case{PolicyKind::kClusterKv, true},
                       Case{PolicyKind::kClusterKv, true, true, 0.8f}, Case{PolicyKind::kClusterKv, true, true, -1.0f},
                       Case{PolicyKind::kFull, false}, Case{PolicyKind::kQuest, true}}) {
    const PolicyKind kind = c.kind;
    PolicyOptions policy;
    policy.kind = kind;
    policy.budget = 512;
    policy.sparse_prefill = c.sparse_prefill;
    policy.speculative = c.speculative;
    policy.correction_threshold = c.tau;
    const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 3).value();
    auto session = cluster_->CreateSession(policy);
    ASSERT_TRUE(session.ok()) << session.status();
    v1::AppendTextResponse appended;
    ASSERT_TRUE(Append(session->session_id(), doc.document(), true, &appended).ok());
    v1::GenerateRequest req;
    req.set_session_id(session->session_id());
    req.set_prompt(doc.question());
    req.set_max_tokens(10);
    const Answer a = Ask(req);
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    const std::vector<int32_t> want =
        InProcessAnswer(policy, tok.EncodeWithSpecials(doc.document()).value(), tok.Encode(doc.question()).value(), 10);
    const std::string label = absl::StrCat(PolicyKindName(kind), c.sparse_prefill ? " (question retrieves)" : "",
                                           c.speculative ? absl::StrCat(" speculative, tau ", c.tau) : "");
    EXPECT_EQ(a.ids, want) << label;
    if (!c.speculative || c.tau > 0) {
      EXPECT_EQ(a.text, doc.answer) << label;
    }
    EXPECT_EQ(a.last.finish_reason(), "eos");
    EXPECT_GT(a.last.timings().recall_bytes(), 0);
    // When the question retrieves too, decode recalls a fraction of the session (dense layers 0-1 read it all).
    const int64_t session_bytes = cluster_->store_client().GetSession(session->session_id())->bytes();
    if (c.sparse_prefill) {
      EXPECT_LT(a.last.timings().recall_bytes(), session_bytes * 3 / 4) << label;
    }
  }
}

TEST_F(E2eTest, OneShotPromptsGoThroughATemporarySession) {
  const Tokenizer& tok = *cluster_->model().tokenizer;
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_1024.jsonl", 0).value();
  v1::GenerateRequest req;
  req.set_prompt(doc.document() + doc.question());
  req.set_max_tokens(10);
  const int64_t sessions_before = cluster_->store_client().Stats()->sessions();
  const Answer a = Ask(req);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.text, doc.answer);
  const std::vector<int32_t> prompt = tok.EncodeWithSpecials(doc.document() + doc.question()).value();
  PolicyOptions policy;  // the decode service's default one-shot policy
  policy.budget = 1024;
  EXPECT_EQ(a.ids,
            InProcessAnswer(policy, std::vector<int32_t>(prompt.begin(), prompt.end() - 1), {prompt.back()}, 10));
  EXPECT_EQ(cluster_->store_client().Stats()->sessions(), sessions_before);  // the temporary session is gone
}

TEST_F(E2eTest, StopStringsEndTheAnswerAndAreNotReturned) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_1024.jsonl", 1).value();
  PolicyOptions policy;
  auto session = cluster_->CreateSession(policy);
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE(Append(session->session_id(), doc.document(), true).ok());
  v1::GenerateRequest req;
  req.set_session_id(session->session_id());
  req.set_prompt(doc.question());
  req.set_max_tokens(10);
  req.add_stop(doc.answer.substr(3, 2));  // two digits in the middle of the number
  const Answer a = Ask(req);
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(a.text, doc.answer.substr(0, 3));
  EXPECT_EQ(a.last.finish_reason(), "stop");
}

TEST_F(E2eTest, AppendTurnExtendsTheSession) {
  PolicyOptions policy;
  auto session = cluster_->CreateSession(policy);
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE(Append(session->session_id(), "The pass key is 12345. Remember it. ", true).ok());
  const int64_t before = cluster_->store_client().GetSession(session->session_id())->num_tokens();
  v1::GenerateRequest req;
  req.set_session_id(session->session_id());
  req.set_prompt("What is the pass key? The pass key is");
  req.set_max_tokens(8);
  req.set_append_turn(true);
  const Answer a = Ask(req);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  const int64_t after = cluster_->store_client().GetSession(session->session_id())->num_tokens();
  EXPECT_EQ(after, before + static_cast<int64_t>(std::string("What is the pass key? The pass key is").size()) +
                       static_cast<int64_t>(a.ids.size()));
}

TEST_F(E2eTest, BadInputGetsTheRightCodeOnEveryRpc) {
  PolicyOptions policy;
  auto session = cluster_->CreateSession(policy);
  ASSERT_TRUE(session.ok());
  auto gen = [&](std::function<void(v1::GenerateRequest*)> edit) {
    v1::GenerateRequest req;
    req.set_session_id(session->session_id());
    req.set_prompt("hello");
    req.set_max_tokens(2);
    edit(&req);
    return Ask(req).status;
  };
  // Unknown sessions.
  grpc::Status s = gen([](v1::GenerateRequest* r) { r->set_session_id("nope"); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("nope"));
  EXPECT_EQ(Append("nope", "x", false).error_code(), grpc::StatusCode::NOT_FOUND);
  // Malformed requests.
  s = gen([](v1::GenerateRequest* r) { r->set_max_tokens(-3); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("max_tokens"));
  s = gen([](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(2); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("top_p"));
  s = gen([](v1::GenerateRequest* r) { r->set_prompt(""); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = gen([](v1::GenerateRequest* r) { r->set_max_tokens(1 << 30); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    v1::AppendTextRequest req;
    req.set_session_id(session->session_id());
    req.mutable_tokens()->add_ids(999999);
    v1::AppendTextResponse resp;
    s = cluster_->prefill().AppendText(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("token id 999999"));
  }
  {
    grpc::ClientContext ctx;
    v1::AppendTextRequest req;
    req.set_session_id(session->session_id());
    v1::AppendTextResponse resp;
    EXPECT_EQ(cluster_->prefill().AppendText(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // A session made for another model, or with another geometry.
  v1::CreateSessionRequest other;
  other.set_model("other-model");
  PolicyOptions p;
  *other.mutable_geometry() = ToProto(GeometryFor(cluster_->model().config, p));
  *other.mutable_policy() = ToProto(p);
  auto foreign = cluster_->store_client().CreateSession(other);
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ(Append(foreign->session_id(), "x", false).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  other.set_model("tiny");
  other.mutable_geometry()->set_head_dim(64);
  auto wrong_shape = cluster_->store_client().CreateSession(other);
  ASSERT_TRUE(wrong_shape.ok());
  s = gen([&](v1::GenerateRequest* r) { r->set_session_id(wrong_shape->session_id()); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("KV heads of 64; the model has 4 x 2 of 32"));
}

TEST_F(E2eTest, ConcurrentAppendsToOneSessionAreOrderedNeverInterleaved) {
  PolicyOptions policy;
  policy.kind = PolicyKind::kFull;
  auto session = cluster_->CreateSession(policy);
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE(Append(session->session_id(), "start. ", true).ok());
  std::vector<std::thread> threads;
  std::vector<grpc::Status> results(4);
  std::vector<v1::AppendTextResponse> responses(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      results[i] = Append(session->session_id(), absl::StrCat("part ", i, " of the text. "), false, &responses[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (const grpc::Status& s : results) EXPECT_TRUE(s.ok()) << s.error_message();
  // Each append saw the session exactly as the previous one left it: versions 2..5, each once.
  std::vector<int64_t> versions;
  for (const auto& r : responses) versions.push_back(r.session_version());
  std::sort(versions.begin(), versions.end());
  EXPECT_EQ(versions, (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(cluster_->store_client().GetSession(session->session_id())->num_tokens(),
            1 + 7 + 4 * static_cast<int64_t>(std::string("part 0 of the text. ").size()));
}

TEST_F(E2eTest, ThousandCancelledGenerationsLeaveNoLeasesAndNoPoolGrowth) {
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/passkey_1024.jsonl", 2).value();
  PolicyOptions policy;
  auto session = cluster_->CreateSession(policy);
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE(Append(session->session_id(), doc.document(), true).ok());
  const auto before = cluster_->store_client().Stats().value();
  int cancelled = 0;
  for (int i = 0; i < 1000; ++i) {
    grpc::ClientContext ctx;
    if (i % 2 == 0) {
      SetDeadline(&ctx, absl::Milliseconds(1 + i % 7));  // the deadline cancels it
    } else {
      SetDeadline(&ctx, absl::Seconds(30));
    }
    v1::GenerateRequest req;
    req.set_session_id(session->session_id());
    req.set_prompt(doc.question());
    req.set_max_tokens(64);
    auto reader = cluster_->decode().Generate(&ctx, req);
    v1::GenerateResponse r;
    if (i % 2 == 1 && reader->Read(&r)) ctx.TryCancel();  // the client cancels after the first piece
    while (reader->Read(&r)) {
    }
    const grpc::Status s = reader->Finish();
    cancelled += s.error_code() == grpc::StatusCode::CANCELLED || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  EXPECT_GE(cancelled, 990);  // a 7 ms deadline may, rarely, be enough for the whole answer
  // Leases are released as each call unwinds; wait for the stragglers.
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  v1::StatsResponse after;
  do {
    after = cluster_->store_client().Stats().value();
    if (after.leases() == before.leases()) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < give_up);
  EXPECT_EQ(after.leases(), 0);
  EXPECT_EQ(after.pool_used_bytes(), before.pool_used_bytes());
  EXPECT_EQ(after.sessions(), before.sessions());
  EXPECT_EQ(after.open_appends(), 0);
}

}  // namespace
}  // namespace livekv
