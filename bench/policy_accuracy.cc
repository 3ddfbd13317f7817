// Accuracy of every KV-cache policy versus budget on livekv's trained model (models/tiny) and its synthetic
// retrieval tasks (models/tiny/eval: passkey, multi-key, variable tracking). For each document the prompt is
// prefilled once densely (what full, quest and clusterkv do) and the same KV is imported into every policy's
// cache; streaming gets its own windowed prefill, as StreamingLLM would run. The answer is decoded greedily and
// must match exactly. Also reports the attention mass each selection covers (sparse layers, mean over steps).
//
//   bazel run //bench:policy_accuracy -- [--length 2048] [--docs 20]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/allocator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "kvcache/policy_kv_context.h"
#include "models/eval_set.h"

ABSL_FLAG(std::string, model, "models/tiny", "Model directory (with eval/ documents).");
ABSL_FLAG(int32_t, length, 2048, "Document length in bytes: 1024, 2048 or 4096.");
ABSL_FLAG(int32_t, docs, 20, "Documents per task.");

namespace livekv {
namespace {

struct Config {
  std::string label;
  PolicyOptions options;
};

struct Score {
  int correct = 0, total = 0;
  double mass = 0;
  int mass_samples = 0;
};

PolicyOptions Base(PolicyKind kind, int32_t budget) {
  PolicyOptions o;
  o.kind = kind;
  o.budget = budget;
  o.window = 64;
  o.cluster_window = 128;
  o.measure_attention_mass = true;
  return o;
}

int Run() {
  CpuBackend backend;
  LoadedModel model = LoadModel(absl::GetFlag(FLAGS_model), &backend).value();
  const ModelConfig& c = model.config;
  std::vector<Config> configs = {{"full", Base(PolicyKind::kFull, 1)}};
  for (int32_t budget : {256, 384, 512, 768, 1024}) {
    for (PolicyKind kind : {PolicyKind::kStreaming, PolicyKind::kQuest, PolicyKind::kClusterKv}) {
      configs.push_back({absl::StrCat(PolicyKindName(kind), "@", budget), Base(kind, budget)});
    }
  }
  std::map<std::string, std::map<std::string, Score>> scores;  // config -> task -> score
  HostAllocator host;
  const std::vector<std::string> tasks = {"passkey", "multikey", "vartrack"};
  for (const std::string& task : tasks) {
    const std::string path =
        absl::StrCat(absl::GetFlag(FLAGS_model), "/eval/", task, "_", absl::GetFlag(FLAGS_length), ".jsonl");
    for (const EvalDoc& doc : ReadEvalDocs(path, absl::GetFlag(FLAGS_docs)).value()) {
      std::vector<int32_t> prompt = {256};
      for (unsigned char ch : doc.prompt) prompt.push_back(ch);
      const int64_t max_tokens = prompt.size() + doc.answer.size() + 8;
      // Dense prefill once; its KV, token-major per layer, seeds every non-streaming policy.
      auto full_pool = CreateKvPagePool(c, Base(PolicyKind::kFull, 1), max_tokens, &host).value();
      auto full_kv = PolicyKvContext::Create(c, Base(PolicyKind::kFull, 1), full_pool.get(), nullptr).value();
      std::vector<float> prefill_logits;
      if (!model.transformer->Forward(prompt, full_kv.get(), false, &prefill_logits).ok()) return 1;
      const int64_t n = full_kv->num_tokens();
      std::vector<std::vector<float>> keys(c.num_layers), values(c.num_layers);
      for (int l = 0; l < c.num_layers; ++l) {
        keys[l].resize(n * c.kv_dim());
        values[l].resize(n * c.kv_dim());
        for (int h = 0; h < c.num_kv_heads; ++h) {
          std::vector<KvRun> runs;
          full_kv->sequence().AppendRuns(l, h, full_kv->sequence().SelectAll(l, h), &runs);
          int64_t pos = 0;
          for (const KvRun& r : runs) {
            for (int32_t i = 0; i < r.n; ++i, ++pos) {
              std::memcpy(&keys[l][(pos * c.num_kv_heads + h) * c.head_dim],
                          static_cast<const float*>(r.k) + i * c.head_dim, c.head_dim * 4);
              std::memcpy(&values[l][(pos * c.num_kv_heads + h) * c.head_dim],
                          static_cast<const float*>(r.v) + i * c.head_dim, c.head_dim * 4);
            }
          }
        }
      }
      for (const Config& cfg : configs) {
        auto pool = CreateKvPagePool(c, cfg.options, max_tokens, &host).value();
        auto kv = PolicyKvContext::Create(c, cfg.options, pool.get(), nullptr).value();
        std::vector<float> logits;
        if (cfg.options.kind == PolicyKind::kStreaming) {
          if (!model.transformer->Forward(prompt, kv.get(), false, &logits).ok()) return 1;
        } else {
          for (int l = 0; l < c.num_layers; ++l) {
            const TensorView k{keys[l].data(), DType::kF32, {n, c.num_kv_heads, c.head_dim}};
            const TensorView v{values[l].data(), DType::kF32, {n, c.num_kv_heads, c.head_dim}};
            if (!kv->Append(l, k, v).ok()) return 1;
          }
          if (!kv->Commit(n).ok()) return 1;
          logits = prefill_logits;
        }
        std::string got;
        for (size_t i = 0; i < doc.answer.size(); ++i) {
          const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
          if (next >= 256) break;
          got.push_back(static_cast<char>(next));
          if (!model.transformer->Forward({&next, 1}, kv.get(), false, &logits).ok()) return 1;
        }
        Score& s = scores[cfg.label][task];
        s.correct += got == doc.answer;
        ++s.total;
        for (int l = 0; l < c.num_layers; ++l) {
          if (l == 0 || l == 1) continue;  // dense layers
          s.mass += kv->counters()[l].mean_mass();
          ++s.mass_samples;
        }
      }
    }
  }
  std::printf(
      "model %s, documents of %d bytes (~%d tokens), %d per task; window 64, cluster_window 128, "
      "sink 16; layers 0-1 dense\n",
      absl::GetFlag(FLAGS_model).c_str(), absl::GetFlag(FLAGS_length), absl::GetFlag(FLAGS_length) + 1,
      absl::GetFlag(FLAGS_docs));
  std::printf("%-16s %9s %9s %9s %9s   %s\n", "policy@budget", "passkey", "multikey", "vartrack", "all",
              "attention mass (layers 2-3)");
  for (const Config& cfg : configs) {
    int correct = 0, total = 0;
    double mass = 0;
    int samples = 0;
    std::printf("%-16s", cfg.label.c_str());
    for (const std::string& task : tasks) {
      const Score& s = scores[cfg.label][task];
      std::printf(" %9.2f", double(s.correct) / s.total);
      correct += s.correct;
      total += s.total;
      mass += s.mass;
      samples += s.mass_samples;
    }
    // Streaming frees what it drops, so a "dense" reference over its cache would be over the kept tokens only.
    if (cfg.options.kind == PolicyKind::kStreaming) {
      std::printf(" %9.2f   n/a (dropped tokens)\n", double(correct) / total);
    } else {
      std::printf(" %9.2f   %.3f\n", double(correct) / total, mass / samples);
    }
  }
  return 0;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Run();
}
