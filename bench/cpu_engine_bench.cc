// CPU prefill and decode throughput of a ~100M-parameter dummy model (preset small-100m), each figure next to a
// ceiling measured in the same run: the fp32 GEMM rate (prefill is compute-bound) and the memory read
// bandwidth of the same threads (decode reads every weight once per token).
//
//   bazel run //bench:cpu_engine_bench -- [--prompt_tokens 256] [--decode_tokens 32] [--threads 0]
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/ceilings.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/presets.h"
#include "engine/transformer.h"
#include "engine/weights.h"

ABSL_FLAG(int64_t, prompt_tokens, 256, "Prompt length for the prefill measurement.");
ABSL_FLAG(int64_t, decode_tokens, 32, "Decode steps measured after the prompt.");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all).");
ABSL_FLAG(std::string, preset, "small-100m", "Model shape.");

namespace livekv {
namespace {

int Run() {
  const int threads = absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                                       : static_cast<int>(std::thread::hardware_concurrency());
  const ModelConfig c = PresetConfig(absl::GetFlag(FLAGS_preset)).value();
  CpuBackend backend(CpuBackendOptions{.num_threads = threads});
  auto model = Transformer::Create(c, DummyWeights(c, 1, &backend).value(), &backend,
                                   TransformerOptions{.max_chunk = 256})
                   .value();
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt_tokens), steps = absl::GetFlag(FLAGS_decode_tokens);
  std::vector<int32_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i) prompt[i] = static_cast<int32_t>((i * 7919) % c.vocab_size);

  // Linear-layer FLOPs per token (2 per multiply-add), the work a GEMM ceiling speaks to.
  const double linear_params = static_cast<double>(c.NumParameters() - c.vocab_size * c.hidden_size);
  const double flops_per_token = 2.0 * linear_params;
  const double weight_bytes = 4.0 * c.NumParameters();

  std::vector<float> logits;
  double prefill_s = 0, decode_s = 0;
  for (int rep = 0; rep < 3; ++rep) {  // median of 3 over fresh caches
    auto kv = DenseKvCache::Create(c, &backend, DType::kF32, prompt_len + steps).value();
    auto t0 = std::chrono::steady_clock::now();
    if (!model->Forward(prompt, kv.get(), false, &logits).ok()) return 1;
    const double ps = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t0 = std::chrono::steady_clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      const int32_t tok[] = {static_cast<int32_t>(s % c.vocab_size)};
      if (!model->Forward(tok, kv.get(), false, &logits).ok()) return 1;
    }
    const double ds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep == 0 || ps < prefill_s) prefill_s = ps;
    if (rep == 0 || ds < decode_s) decode_s = ds;
  }

  const double gemm = bench::SgemmGflops(256, c.intermediate_size * 2, c.hidden_size);
  const double read_gbps = bench::ReadGBps(threads);
  const double prefill_tps = prompt_len / prefill_s, decode_tps = steps / decode_s;
  const double prefill_gflops = prefill_tps * flops_per_token / 1e9;
  const double decode_gbps = decode_tps * weight_bytes / 1e9;
  std::printf("model %s: %.1fM parameters (%.0f MB fp32), %d threads\n", absl::GetFlag(FLAGS_preset).c_str(),
              c.NumParameters() / 1e6, weight_bytes / 1e6, threads);
  std::printf("ceilings: sgemm 256x%lldx%lld %.1f GFLOP/s | memory read, %d threads %.2f GB/s\n",
              static_cast<long long>(c.intermediate_size * 2), static_cast<long long>(c.hidden_size), gemm, threads,
              read_gbps);
  std::printf("%-8s %10s %12s %12s %10s\n", "stage", "tokens/s", "achieved", "ceiling", "ratio");
  std::printf("%-8s %10.1f %8.1f GF/s %8.1f GF/s %10.2f\n", "prefill", prefill_tps, prefill_gflops, gemm,
              prefill_gflops / gemm);
  std::printf("%-8s %10.1f %8.2f GB/s %8.2f GB/s %10.2f   (weights read per token / read bandwidth)\n",
              "decode", decode_tps, decode_gbps, read_gbps, decode_gbps / read_gbps);
  std::printf("%-8s %10.1f %8.1f GF/s %8.1f GF/s %10.2f\n", "decode", decode_tps, decode_tps * flops_per_token / 1e9,
              gemm, decode_tps * flops_per_token / 1e9 / gemm);
  return 0;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Run();
}
