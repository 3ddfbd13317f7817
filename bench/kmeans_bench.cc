// ClusterKV-shaped k-means throughput (kvcache/kmeans.h): n = 32768 keys x dim = 128 -> k = 400 clusters, 20
// iterations (+ the final relabel), each figure next to the OpenBLAS sgemm rate measured in the same process:
//   - one core: KMeans with no pool and OpenBLAS on 1 thread, against cblas_sgemm [1024 x 128] x [128 x 400] on
//     1 thread (the assignment step's shape class);
//   - T threads, two ways: a ThreadPool of T over point blocks with OpenBLAS on 1 thread ("pool"), or no pool and
//     OpenBLAS on T threads ("openblas"), against cblas_sgemm [32768 x 128] x [128 x 400] on T OpenBLAS threads
//     (the whole assignment step as one product);
//   - a sweep of the sgemm block height (KMeansOptions::block_rows) at 5 iterations, one core;
//   - the k-means++ init alone (its assign_GFLOPs counts only the one assignment pass, so read its time).
// Counters: assign_GFLOPs = 2·n·k·dim·assignment_passes / wall time of the whole clustering (init, argmax and update
// included, so it is the end-to-end rate expressed in assignment FLOPs); sgemm_GFLOPs = the ceiling;
// ratio = assign_GFLOPs / sgemm_GFLOPs; keys_per_s = n / wall time of one clustering; passes = assignment passes.
//
//   bazel run //bench:kmeans_bench [-- --benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "bench/ceilings.h"
#include "common/thread_pool.h"
#include "kvcache/kmeans.h"

namespace livekv {
namespace {

constexpr int64_t kN = 32768;
constexpr int32_t kDim = 128;
constexpr int32_t kClusters = 400;

// Keys: i.i.d. normal, the hardest case for Lloyd (no early convergence), so every run does the full 20 rounds.
const std::vector<float>& Keys() {
  static const std::vector<float>* keys = [] {
    auto* v = new std::vector<float>(kN * kDim);
    std::mt19937 rng(2024);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& x : *v) x = normal(rng);
    return v;
  }();
  return *keys;
}

// sgemm ceilings, measured right before and right after each benchmark and averaged, so that a neighbour's load
// (the CI box's cores are shared) shifts the figure and its ceiling alike.
// One core: the assignment's shape class, [1024 x dim] x [dim x k] on one OpenBLAS thread.
double CeilingOneCore() {
  openblas_set_num_threads(1);
  return bench::SgemmGflops(1024, kClusters, kDim);
}

// `threads` OpenBLAS threads on the whole assignment as one product, [n x dim] x [dim x k].
double CeilingThreads(int threads) {
  openblas_set_num_threads(threads);
  const double g = bench::SgemmGflops(static_cast<int>(kN), kClusters, kDim);
  openblas_set_num_threads(1);
  return g;
}

void RunKMeans(benchmark::State& state, const KMeansOptions& options, const std::function<double()>& ceiling,
               const std::function<void()>& set_threads) {
  const std::vector<float>& keys = Keys();
  const double ceiling_before = ceiling();
  set_threads();
  double seconds = 0;
  int64_t passes = 0, runs = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<KMeansResult> r = KMeans(keys.data(), kN, kDim, options);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) {
      state.SkipWithError(r.status().ToString().c_str());
      return;
    }
    passes += r->assignment_passes;
    ++runs;
    benchmark::DoNotOptimize(r->labels.data());
  }
  const double ceiling_gflops = (ceiling_before + ceiling()) / 2;
  const double gflops = 2.0 * kN * kClusters * kDim * passes / seconds / 1e9;
  state.counters["assign_GFLOPs"] = gflops;
  state.counters["sgemm_GFLOPs"] = ceiling_gflops;
  state.counters["ratio"] = gflops / ceiling_gflops;
  state.counters["keys_per_s"] = kN * runs / seconds;
  state.counters["passes"] = static_cast<double>(passes) / runs;
}

void OneOpenBlasThread() { openblas_set_num_threads(1); }

void BM_KMeansOneCore(benchmark::State& state) {
  KMeansOptions o;
  o.num_clusters = kClusters;
  o.iterations = 20;
  RunKMeans(state, o, CeilingOneCore, OneOpenBlasThread);
}
BENCHMARK(BM_KMeansOneCore)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();

// Arg 0: threads; arg 1: 0 = ThreadPool over blocks with OpenBLAS on 1 thread, 1 = OpenBLAS on `threads` threads.
void BM_KMeansThreads(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const bool openblas_threads = state.range(1) == 1;
  std::unique_ptr<ThreadPool> pool;
  KMeansOptions o;
  o.num_clusters = kClusters;
  o.iterations = 20;
  if (!openblas_threads) {
    pool = std::make_unique<ThreadPool>(threads);
    o.pool = pool.get();
  }
  state.SetLabel(openblas_threads ? "openblas threads" : "pool, openblas 1 thread");
  RunKMeans(
      state, o, [threads] { return CeilingThreads(threads); },
      [&] { openblas_set_num_threads(openblas_threads ? threads : 1); });
  openblas_set_num_threads(1);
}
BENCHMARK(BM_KMeansThreads)
    ->ArgNames({"threads", "openblas"})
    ->Args({2, 0})
    ->Args({2, 1})
    ->Args({4, 0})
    ->Args({4, 1})
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_KMeansBlockRows(benchmark::State& state) {
  KMeansOptions o;
  o.num_clusters = kClusters;
  o.iterations = 5;
  o.block_rows = static_cast<int32_t>(state.range(0));
  RunKMeans(state, o, CeilingOneCore, OneOpenBlasThread);
}
BENCHMARK(BM_KMeansBlockRows)
    ->ArgName("block_rows")
    ->Arg(64)
    ->Arg(128)
    ->Arg(256)
    ->Arg(512)
    ->Arg(1024)
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The k-means++ init alone (iterations = 0: init, one assignment pass, one mean update), one core.
void BM_KMeansPlusPlusInit(benchmark::State& state) {
  KMeansOptions o;
  o.num_clusters = kClusters;
  o.iterations = 0;
  o.init = KMeansInit::kPlusPlus;
  RunKMeans(state, o, CeilingOneCore, OneOpenBlasThread);
}
BENCHMARK(BM_KMeansPlusPlusInit)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("kmeans: n = %lld keys, dim = %d, k = %d; OpenBLAS %s, core %s\n", static_cast<long long>(livekv::kN),
              livekv::kDim, livekv::kClusters, openblas_get_config(), openblas_get_corename());
  std::printf("ceiling at start: cblas_sgemm [1024 x %d] x [%d x %d], 1 thread: %.1f GFLOP/s\n", livekv::kDim,
              livekv::kDim, livekv::kClusters, livekv::CeilingOneCore());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
