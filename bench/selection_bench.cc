// ClusterKV selection latency per layer: for each of 8 KV heads (Llama-3-8B: 4 query heads per KV head,
// head_dim 128), score C centroids with the group's queries (mean of per-head softmax) and pick clusters greedily
// under a 2048-token budget. Next to it, in the same process, the time to read the layer's centroids once at the
// single-thread memory read bandwidth: scoring is a matrix-vector product, bound by that read.
//
//   bazel run //bench:selection_bench
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <random>
#include <vector>

#include "bench/ceilings.h"
#include "kvcache/selection.h"

namespace livekv {
namespace {

constexpr int kHeads = 8, kGroup = 4, kDim = 128, kBudget = 2048;

void BM_SelectLayer(benchmark::State& state) {
  const int clusters = static_cast<int>(state.range(0));
  openblas_set_num_threads(1);
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0, 1);
  std::uniform_int_distribution<int> size(16, 144);  // ~80 tokens per cluster, as ClusterKV's prefill
  std::vector<std::vector<float>> centroids(kHeads, std::vector<float>(clusters * kDim));
  std::vector<std::vector<int32_t>> sizes(kHeads, std::vector<int32_t>(clusters));
  for (int h = 0; h < kHeads; ++h) {
    for (float& x : centroids[h]) x = n(rng);
    for (int32_t& s : sizes[h]) s = size(rng);
  }
  std::vector<float> q(kHeads * kGroup * kDim);
  for (float& x : q) x = n(rng);
  std::vector<float> scores(clusters);
  int64_t chosen = 0;
  for (auto _ : state) {
    for (int h = 0; h < kHeads; ++h) {
      const QueryGroup group{q.data() + h * kGroup * kDim, 1, kHeads * kGroup * kDim, kGroup, kDim};
      ScoreCentroids(group, centroids[h].data(), clusters, GroupPooling::kMeanSoftmax, scores.data());
      chosen += SelectGreedy(scores, sizes[h], kBudget, nullptr).size();
    }
  }
  benchmark::DoNotOptimize(chosen);
  const double bytes = double(kHeads) * clusters * kDim * sizeof(float);
  const double read_s = bytes / (bench::ReadGBps(1, size_t{256} << 20) * 1e9);
  state.counters["centroid_read_us"] = read_s * 1e6;
  state.counters["floor_over_time"] = benchmark::Counter(read_s * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["clusters_chosen_per_head"] = double(chosen) / state.iterations() / kHeads;
}
BENCHMARK(BM_SelectLayer)->Arg(400)->Arg(1000)->Arg(4000)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace livekv

BENCHMARK_MAIN();
