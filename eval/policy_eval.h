// File: eval/policy_eval.h
//
// Accuracy of the KV-cache policies against full attention on one model, document by document (the protocol of
// ClusterKV's and Quest's LongBench harnesses, ../shared/research/seeds.md §1.2): the document is prefilled once,
// densely, and that KV is imported into every policy's cache (streaming then drops what is outside its window);
// the question is fed one token at a time as decode steps, so it already attends only to what the policy
// selects; the answer is decoded greedily and must match exactly. Per policy and document it records the answer,
// the dense attention probability the selection covered (sparse layers, mean over heads and decode steps), and
// the output error against full attention: the relative L2 distance of the logits to full attention's, over the
// decode steps whose inputs are the same (the question, and the answer while both have produced the same bytes).
//
//   PolicyEvaluator evaluator(&model);
//   std::vector<EvalConfig> configs = {FullConfig(), PolicyConfig(PolicyKind::kClusterKv, 512, false)};
//   LIVEKV_ASSIGN_OR_RETURN(std::vector<DocResult> r, evaluator.Evaluate(doc, configs));
//
// Thread-safety: one Evaluate at a time per evaluator.
#ifndef LIVEKV_EVAL_POLICY_EVAL_H_
#define LIVEKV_EVAL_POLICY_EVAL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_files.h"
#include "kvcache/policy_options.h"
#include "models/eval_set.h"

namespace livekv {

struct EvalConfig {
  std::string policy;  // "full", "streaming", "quest", "clusterkv", "clusterkv+spec"
  int32_t budget = 0;  // 0 for full
  PolicyOptions options;
};

// Full attention (the reference every other configuration is compared with).
EvalConfig FullConfig();
// `kind` at `budget` with the evaluation's shared parameters: sink 16, recent window 32, pages and clusters of
// 32 tokens, clusterkv clustering every 64 tokens past the window (so budget 128 is valid for every policy),
// layers 0 and 1 dense; `speculative` enables FreeKV's speculative recall (clusterkv only).
EvalConfig PolicyConfig(PolicyKind kind, int32_t budget, bool speculative);

struct DocResult {
  std::string answer;           // greedy continuation, at most as many bytes as the expected answer
  bool correct = false;         // answer == expected
  double attention_mass = -1;   // mean over sparse layers; 1 for full; -1 where undefined (streaming drops tokens)
  double output_error = 0;      // mean relative L2 distance of the logits to full attention's
  int64_t context_tokens = 0;   // tokens of the prompt (BOS + document + question)
};

class PolicyEvaluator {
 public:
  // `model` must outlive the evaluator.
  explicit PolicyEvaluator(const LoadedModel* model) : model_(model) {}

  // One result per configuration, in order. REQUIRES: configs[0] is FullConfig() (the reference).
  // INVALID_ARGUMENT for a document without a question ("What is") or invalid options; engine errors as they come.
  absl::StatusOr<std::vector<DocResult>> Evaluate(const EvalDoc& doc, absl::Span<const EvalConfig> configs);

 private:
  const LoadedModel* model_;
};

}  // namespace livekv

#endif  // LIVEKV_EVAL_POLICY_EVAL_H_
