// The CI-sized accuracy check of the committed model (models/tiny) through the C++ engine on the CPU: a few 2k-byte
// documents of each trained family must be answered with full attention, and clusterkv with a budget covering the
// whole context must give exactly the full-attention answers (and logits).
#include "eval/policy_eval.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

class PolicyEvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_ = new CpuBackend();
    model_ = new LoadedModel(LoadModel("models/tiny", backend_).value());
  }
  static std::vector<EvalDoc> Docs(const std::string& task, int length, int n) {
    return ReadEvalDocs(absl::StrCat("models/tiny/eval/", task, "_", length, ".jsonl"), n).value();
  }
  static CpuBackend* backend_;
  static LoadedModel* model_;
};
CpuBackend* PolicyEvalTest::backend_ = nullptr;
LoadedModel* PolicyEvalTest::model_ = nullptr;

TEST_F(PolicyEvalTest, FullAttentionAnswersShortDocumentsOfEveryTrainedFamily) {
  PolicyEvaluator evaluator(model_);
  const std::vector<EvalConfig> configs = {FullConfig()};
  for (const std::string task : {"passkey", "multikey", "vartrack", "multivalue", "commonword"}) {
    int correct = 0;
    const std::vector<EvalDoc> docs = Docs(task, 2048, 3);
    for (const EvalDoc& doc : docs) {
      const std::vector<DocResult> r = evaluator.Evaluate(doc, configs).value();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].answer, doc.answer) << task;
      correct += r[0].correct;
    }
    EXPECT_EQ(correct, 3) << task;
  }
}

TEST_F(PolicyEvalTest, ClusterKvWithABudgetCoveringTheContextIsFullAttention) {
  PolicyEvaluator evaluator(model_);
  for (const std::string task : {"passkey", "vartrack"}) {
    for (const EvalDoc& doc : Docs(task, 1024, 2)) {
      const int32_t budget = static_cast<int32_t>(doc.prompt.size() + doc.answer.size() + 64);
      const std::vector<EvalConfig> configs = {FullConfig(), PolicyConfig(PolicyKind::kClusterKv, budget, false),
                                               PolicyConfig(PolicyKind::kClusterKv, budget, true)};
      const std::vector<DocResult> r = evaluator.Evaluate(doc, configs).value();
      for (size_t i = 1; i < r.size(); ++i) EXPECT_EQ(r[i].answer, r[0].answer) << configs[i].policy;
      // Every token is attended, in cluster order rather than positional: the logits differ only by the order of
      // the fp32 sums.
      // Speculative recall attends the previous step's selection plus the clusters formed since, so every token too.
      for (size_t i = 1; i < r.size(); ++i) {
        EXPECT_LT(r[i].output_error, 1e-5) << configs[i].policy;
        EXPECT_NEAR(r[i].attention_mass, 1.0, 1e-6) << configs[i].policy;
      }
    }
  }
}

TEST_F(PolicyEvalTest, SmallBudgetsDifferFromFullAttention) {
  // The measures are not vacuous: a budget of 128 tokens on a 1k-token document changes the logits, covers less
  // than all the attention, and streaming (which drops the fact) loses the answer.
  PolicyEvaluator evaluator(model_);
  const EvalDoc doc = Docs("multikey", 1024, 1)[0];
  const std::vector<EvalConfig> configs = {FullConfig(), PolicyConfig(PolicyKind::kStreaming, 128, false),
                                           PolicyConfig(PolicyKind::kQuest, 128, false),
                                           PolicyConfig(PolicyKind::kClusterKv, 128, false)};
  const std::vector<DocResult> r = evaluator.Evaluate(doc, configs).value();
  ASSERT_EQ(r.size(), 4u);
  EXPECT_TRUE(r[0].correct);
  EXPECT_FALSE(r[1].correct);
  EXPECT_LT(r[1].attention_mass, 0);  // undefined for streaming
  for (size_t i = 1; i < r.size(); ++i) EXPECT_GT(r[i].output_error, 0.0) << configs[i].policy;
  for (size_t i = 2; i < r.size(); ++i) {
    EXPECT_GT(r[i].attention_mass, 0.0) << configs[i].policy;
    EXPECT_LT(r[i].attention_mass, 1.0) << configs[i].policy;
  }
}

TEST_F(PolicyEvalTest, RejectsBadInput) {
  PolicyEvaluator evaluator(model_);
  EvalDoc no_question{"The pass key is 12345.", " 12345."};
  EXPECT_EQ(evaluator.Evaluate(no_question, std::vector<EvalConfig>{FullConfig()}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const EvalDoc doc = Docs("passkey", 1024, 1)[0];
  EXPECT_EQ(evaluator.Evaluate(doc, std::vector<EvalConfig>{PolicyConfig(PolicyKind::kQuest, 256, false)})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
