#include "eval/policy_eval.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/allocator.h"
#include "common/status_macros.h"
#include "kvcache/policy_kv_context.h"

namespace livekv {
namespace {

constexpr int32_t kBos = 256;

PolicyOptions Shared(PolicyKind kind, int32_t budget) {
  PolicyOptions o;
  o.kind = kind;
  o.budget = budget;
  o.sink = 16;
  o.window = 32;
  o.page_tokens = 32;
  o.tokens_per_cluster = 32;
  o.cluster_window = 64;
  o.dense_layers = {0, 1};
  o.measure_attention_mass = kind != PolicyKind::kFull;
  return o;
}

int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0;
}

// The dense KV of a prefilled context, token-major per layer ([tokens][kv_heads][head_dim]).
struct DenseKv {
  int64_t tokens = 0;
  std::vector<std::vector<float>> keys, values;
};

DenseKv Export(const ModelConfig& c, const PolicyKvContext& kv) {
  DenseKv out;
  out.tokens = kv.num_tokens();
  out.keys.resize(c.num_layers);
  out.values.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    out.keys[l].resize(out.tokens * c.kv_dim());
    out.values[l].resize(out.tokens * c.kv_dim());
    for (int h = 0; h < c.num_kv_heads; ++h) {
      std::vector<KvRun> runs;
      kv.sequence().AppendRuns(l, h, kv.sequence().SelectAll(l, h), &runs);
      int64_t pos = 0;
      for (const KvRun& r : runs) {
        for (int32_t i = 0; i < r.n; ++i, ++pos) {
          std::memcpy(&out.keys[l][(pos * c.num_kv_heads + h) * c.head_dim],
                      static_cast<const float*>(r.k) + i * c.head_dim, c.head_dim * sizeof(float));
          std::memcpy(&out.values[l][(pos * c.num_kv_heads + h) * c.head_dim],
                      static_cast<const float*>(r.v) + i * c.head_dim, c.head_dim * sizeof(float));
        }
      }
    }
  }
  return out;
}

}  // namespace

EvalConfig FullConfig() { return {"full", 0, Shared(PolicyKind::kFull, 1)}; }

EvalConfig PolicyConfig(PolicyKind kind, int32_t budget, bool speculative) {
  EvalConfig c{std::string(PolicyKindName(kind)), budget, Shared(kind, budget)};
  if (speculative) {
    c.policy += "+spec";
    c.options.speculative = true;
  }
  return c;
}

absl::StatusOr<std::vector<DocResult>> PolicyEvaluator::Evaluate(const EvalDoc& doc,
                                                                 absl::Span<const EvalConfig> configs) {
  if (configs.empty() || configs[0].options.kind != PolicyKind::kFull) {
    return absl::InvalidArgumentError("the first configuration must be full attention (the reference)");
  }
  const std::string document = doc.document();
  if (document.size() == doc.prompt.size()) {
    return absl::InvalidArgumentError(absl::StrCat("document without a question (\"What is\"): ",
                                                   doc.prompt.substr(0, 80)));
  }
  const ModelConfig& c = model_->config;
  std::vector<int32_t> context = {kBos};
  for (unsigned char ch : document) context.push_back(ch);
  std::vector<int32_t> question;
  for (unsigned char ch : doc.question()) question.push_back(ch);
  const int64_t max_tokens = context.size() + question.size() + doc.answer.size() + 8;
  HostAllocator host;

  // Dense prefill of the document, once; its KV seeds every configuration.
  const PolicyOptions dense = Shared(PolicyKind::kFull, 1);
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> prefill_pool, CreateKvPagePool(c, dense, max_tokens, &host));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PolicyKvContext> prefill_kv,
                          PolicyKvContext::Create(c, dense, prefill_pool.get(), nullptr));
  std::vector<float> logits;
  LIVEKV_RETURN_IF_ERROR(model_->transformer->Forward(context, prefill_kv.get(), false, &logits));
  const DenseKv kv0 = Export(c, *prefill_kv);
  prefill_kv.reset();
  prefill_pool.reset();

  std::vector<std::vector<float>> full_logits;  // per decode step, of the reference
  std::vector<int32_t> full_tokens;             // the reference's inputs after the question
  std::vector<DocResult> results;
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    const EvalConfig& cfg = configs[ci];
    LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, CreateKvPagePool(c, cfg.options, max_tokens, &host));
    LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PolicyKvContext> kv,
                            PolicyKvContext::Create(c, cfg.options, pool.get(), nullptr));
    for (int l = 0; l < c.num_layers; ++l) {
      const TensorView k{const_cast<float*>(kv0.keys[l].data()), DType::kF32, {kv0.tokens, c.num_kv_heads, c.head_dim}};
      const TensorView v{const_cast<float*>(kv0.values[l].data()), DType::kF32,
                         {kv0.tokens, c.num_kv_heads, c.head_dim}};
      LIVEKV_RETURN_IF_ERROR(kv->Append(l, k, v));
    }
    LIVEKV_RETURN_IF_ERROR(kv->Commit(kv0.tokens));
    LIVEKV_RETURN_IF_ERROR(kv->FinishAppend());

    DocResult r;
    r.context_tokens = static_cast<int64_t>(context.size() + question.size());
    std::vector<std::vector<float>> step_logits;
    for (int32_t t : question) {
      LIVEKV_RETURN_IF_ERROR(model_->transformer->Forward({&t, 1}, kv.get(), false, &logits));
      step_logits.push_back(logits);
    }
    std::vector<int32_t> inputs;  // this configuration's tokens after the question
    for (size_t i = 0; i < doc.answer.size(); ++i) {
      const int32_t next = Argmax(logits);
      if (next >= 256) break;
      r.answer.push_back(static_cast<char>(next));
      inputs.push_back(next);
      LIVEKV_RETURN_IF_ERROR(model_->transformer->Forward({&next, 1}, kv.get(), false, &logits));
      step_logits.push_back(logits);
    }
    r.correct = r.answer == doc.answer;
    if (ci == 0) {
      full_logits = step_logits;
      full_tokens = inputs;
      r.attention_mass = 1;
    } else {
      // Compare the logits on identical inputs: the question's steps, and the answer's while it agrees with full's.
      // step_logits[j] are the logits after the j-th decode input (question then answer).
      size_t same = question.size();
      while (same - question.size() < std::min(inputs.size(), full_tokens.size()) &&
             inputs[same - question.size()] == full_tokens[same - question.size()]) {
        ++same;
      }
      same = std::min({same, step_logits.size(), full_logits.size()});
      double err = 0;
      for (size_t j = 0; j < same; ++j) err += RelativeError(step_logits[j], full_logits[j]);
      r.output_error = same > 0 ? err / same : 0;
      if (cfg.options.kind != PolicyKind::kStreaming) {
        double mass = 0;
        int layers = 0;
        for (int l = 0; l < c.num_layers; ++l) {
          if (std::find(cfg.options.dense_layers.begin(), cfg.options.dense_layers.end(), l) !=
              cfg.options.dense_layers.end()) {
            continue;
          }
          mass += kv->counters()[l].mean_mass();
          ++layers;
        }
        r.attention_mass = layers > 0 ? mass / layers : 1;
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace livekv
