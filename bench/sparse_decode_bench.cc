// Decode step time on the CPU, sparse (clusterkv) versus dense (full), at 8k and 32k tokens of context, for a
// dummy 8-layer model (hidden 768, 12/4 heads of 64, FFN 2048, vocabulary 32000; fp32 weights and KV).
// The context is filled by appending random keys and values (the decode step does not care where they came
// from); the first step, which clusters the context, is not timed. Each step is also given its floor: the bytes
// it must read (weights, plus the KV it attends) at the memory read bandwidth of the same threads, measured in
// the same process.
//
//   bazel run //bench:sparse_decode_bench
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <random>
#include <thread>

#include "bench/ceilings.h"
#include "common/allocator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/presets.h"
#include "engine/transformer.h"
#include "engine/weights.h"
#include "kvcache/policy_kv_context.h"

namespace livekv {
namespace {

ModelConfig Config() {
  ModelConfig c = PresetConfig("small-100m").value();
  c.num_layers = 8;
  c.max_position_embeddings = 131072;
  return c;
}

std::map<std::pair<int, int64_t>, double>& StepSeconds() {
  static auto* m = new std::map<std::pair<int, int64_t>, double>();
  return *m;
}

void BM_DecodeStep(benchmark::State& state) {
  const bool sparse = state.range(0) == 1;
  const int64_t context = state.range(1);
  const int threads = static_cast<int>(std::thread::hardware_concurrency());
  const ModelConfig c = Config();
  CpuBackend backend(CpuBackendOptions{.num_threads = threads});
  auto model = Transformer::Create(c, DummyWeights(c, 1, &backend).value(), &backend).value();
  PolicyOptions o;
  o.kind = sparse ? PolicyKind::kClusterKv : PolicyKind::kFull;
  o.budget = 1024;
  o.tokens_per_cluster = 80;  // ClusterKV's prefill granularity (400 clusters at 32k)
  HostAllocator host;
  auto pool = CreateKvPagePool(c, o, context + 64, &host).value();
  auto kv = PolicyKvContext::Create(c, o, pool.get(), backend.pool()).value();

  // Fill the context directly: random post-RoPE keys and values for every layer.
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0, 1);
  const int64_t chunk = 2048;
  std::vector<float> k(chunk * c.kv_dim()), v(k.size());
  for (float& x : k) x = n(rng);
  for (float& x : v) x = n(rng);
  for (int64_t done = 0; done < context; done += chunk) {
    const int64_t rows = std::min(chunk, context - done);
    for (int l = 0; l < c.num_layers; ++l) {
      TensorView kt{k.data(), DType::kF32, {rows, c.num_kv_heads, c.head_dim}};
      TensorView vt{v.data(), DType::kF32, {rows, c.num_kv_heads, c.head_dim}};
      if (!kv->Append(l, kt, vt).ok()) state.SkipWithError("append failed");
    }
    if (!kv->Commit(rows).ok()) state.SkipWithError("commit failed");
  }
  std::vector<float> logits;
  int32_t token = 5;
  if (!model->Forward({&token, 1}, kv.get(), false, &logits).ok()) state.SkipWithError("warm-up step failed");

  for (auto _ : state) {
    if (!model->Forward({&token, 1}, kv.get(), false, &logits).ok()) state.SkipWithError("step failed");
  }
  // Bytes a step must read: every weight once, plus the K and V rows it attends.
  const std::vector<LayerCounters>& counters = kv->counters();
  double kv_bytes = 0;
  for (const LayerCounters& lc : counters) kv_bytes += double(lc.bytes_selected) / std::max<int64_t>(1, lc.steps);
  const double weight_bytes = 4.0 * c.NumParameters();
  const double floor_s = (weight_bytes + kv_bytes) / (bench::ReadGBps(threads) * 1e9);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["floor_over_time"] = benchmark::Counter(floor_s * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["kv_MB_per_step"] = kv_bytes / 1e6;
}
BENCHMARK(BM_DecodeStep)
    ->ArgsProduct({{0, 1}, {8192, 32768}})
    ->ArgNames({"sparse", "context"})
    ->Iterations(8)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Prints dense ÷ sparse step time per context after the benchmarks.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const std::string name = r.benchmark_name();
      const bool sparse = name.find("sparse:1") != std::string::npos;
      const int64_t context = name.find("context:32768") != std::string::npos ? 32768 : 8192;
      StepSeconds()[{sparse ? 1 : 0, context}] = r.GetAdjustedRealTime() / 1e3;
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    for (int64_t context : {8192, 32768}) {
      const auto dense = StepSeconds().find({0, context}), sparse = StepSeconds().find({1, context});
      if (dense == StepSeconds().end() || sparse == StepSeconds().end()) continue;
      std::printf("context %lld: dense %.2f ms, sparse %.2f ms, dense / sparse = %.2f\n",
                  static_cast<long long>(context), dense->second * 1e3, sparse->second * 1e3,
                  dense->second / sparse->second);
    }
  }
};

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  livekv::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  return 0;
}
