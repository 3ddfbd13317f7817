// Llama-3-8B-shape engine benchmarks on one GPU (dummy weights generated on the device), each figure next to a
// ceiling measured in the same run:
//   - decode step, batch 1, at 32k and 128k context: the dense path (DenseKvCache on the device, every token
//     attended) and the sparse recall path (CudaRecallKvContext: clusterkv, budget 2048, KV of sparse layers in
//     pinned host memory), each as step time / weight-read floor (weight bytes / measured HBM copy bandwidth) and
//     the sparse path's speedup over the dense one;
//   - GPU k-means during a real 32k prefill (side stream) / prefill time;
//   - the longest context each mode serves on this GPU and host, from measured memory per token, and a decode step
//     of the sparse mode at a length the dense mode cannot hold (when memory and the time budget allow).
// Step time is host wall clock around Transformer::Forward of one token (logits copied back), median of the timed
// steps after warm-up steps. The 32k sparse context is made by a real prefill of random tokens; the 128k ones (and
// the dense caches) by appending random K/V to every layer (the decode step's cost does not depend on the values;
// clustering runs on them as on real keys).
//
// Output: "BENCH <name> <value> <unit> ratio <r> vs <ceiling>" lines, then a table. Exits 0 with SKIPPED where
// there is no GPU. Env LIVEKV_BENCH_BUDGET_S (default 240) bounds the run: optional parts are skipped past it.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cuda/bench/fill.h"
#include "cuda/ops/attention.h"
#include "cuda/ops/kmeans.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/stream.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/recall_kv_context.h"
#include "engine/dense_kv_cache.h"
#include "engine/presets.h"
#include "engine/transformer.h"

namespace livekv {
namespace {

using Clock = std::chrono::steady_clock;
using bf16 = __nv_bfloat16;

#define BENCH_CHECK(expr)                                                                \
  do {                                                                                   \
    const absl::Status bench_status_ = (expr);                                           \
    if (!bench_status_.ok()) {                                                           \
      std::fprintf(stderr, "FAILED: %s: %s\n", #expr, bench_status_.ToString().c_str()); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "FAILED: %s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

struct Row {
  std::string name, unit, vs;
  double value, ratio;
};
std::vector<Row> rows;
const Clock::time_point kStart = Clock::now();

double Elapsed() { return std::chrono::duration<double>(Clock::now() - kStart).count(); }

void Report(const std::string& name, double value, const std::string& unit, double ratio, const std::string& vs) {
  rows.push_back({name, unit, vs, value, ratio});
  std::printf("BENCH %-38s %10.3f %-8s ratio %6.3f vs %s\n", name.c_str(), value, unit.c_str(), ratio, vs.c_str());
  std::fflush(stdout);
}

const char* PlansName(DecodePlans plans) {
  switch (plans) {
    case DecodePlans::kInStream: return "instream";
    case DecodePlans::kZeroCopy: return "zerocopy";
    case DecodePlans::kAside: return "aside";
  }
  return "?";
}

void Note(const std::string& s) {
  std::printf("[%6.1fs] %s\n", Elapsed(), s.c_str());
  std::fflush(stdout);
}

size_t MemAvailableBytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

size_t DeviceFree() {
  size_t free = 0, total = 0;
  cudaMemGetInfo(&free, &total);
  return free;
}

int32_t Argmax(const std::vector<float>& x) {
  return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

struct StepStats {
  double median_ms = 0, p90_ms = 0;
};

// `warmup` untimed steps, then `steps` timed ones; greedy tokens, or one token repeated (`repeat` >= 0: inputs
// whose consecutive queries are alike, the regime FreeKV measured on real models: cos > 0.84).
// `n` random token ids (seed 5: every prefill below sees the same prompt).
std::vector<int32_t> RandomPrompt(const ModelConfig& config, int64_t n) {
  std::vector<int32_t> prompt(n);
  std::mt19937 rng(5);
  for (int32_t& x : prompt) x = static_cast<int32_t>(rng() % config.vocab_size);
  return prompt;
}

// Wall time of one prefill of `prompt` into kv, from an idle device to the logits on the host.
double PrefillSeconds(Transformer& model, CudaBackend* gpu, const std::vector<int32_t>& prompt, KvContext* kv,
                      std::vector<float>* logits) {
  BENCH_CHECK(gpu->Synchronize());
  const auto t0 = Clock::now();
  BENCH_CHECK(model.Forward(prompt, kv, false, logits));
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

StepStats Decode(Transformer& model, KvContext* kv, std::vector<float>* logits, int warmup, int steps,
                 int32_t repeat = -1) {
  std::vector<double> t;
  for (int i = 0; i < warmup + steps; ++i) {
    const int32_t token[] = {repeat >= 0 ? repeat : logits->empty() ? 1 : Argmax(*logits)};
    const auto t0 = Clock::now();
    BENCH_CHECK(model.Forward(token, kv, false, logits));
    if (i >= warmup) t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return StepStats{t[t.size() / 2], t[std::min(t.size() - 1, t.size() * 9 / 10)]};
}

// One decode step of a recall context with its timeline on: per layer, when the compute stream reached the
// layer's queries, when the attention could start (its recall landed) and when it was done; when the speculative
// selection and the recall for the next step ran on their streams. Milliseconds from the step's first Select.
// With `hold` set, a kernel spinning 30 ms on that (the compute) stream goes first, so the host has enqueued the
// whole step before the device starts it: the timeline is then the device's alone (a step the host cannot keep fed
// looks faster held than not).
void PrintTimeline(const std::string& tag, Transformer& model, CudaRecallKvContext* kv, std::vector<float>* logits,
                   double step_ms, cudaStream_t hold = nullptr) {
  kv->set_timeline(true);
  Decode(model, kv, logits, 0, 1);  // a step with the timeline on before the one shown
  if (hold != nullptr) BENCH_CHECK(cuda::LaunchSpin(30000, hold));
  Decode(model, kv, logits, 0, 1);
  const std::vector<CudaRecallKvContext::LayerTimeline> tl = Check(kv->LastStepTimeline(), "timeline");
  kv->set_timeline(false);
  double waited = 0, last_recall = 0, select_ms = 0, recall_ms = 0;
  // Per sparse layer: queries -> attend (the selection's snapshot and the wait for the recall), attend -> attended
  // (the attention), attended -> the next layer's queries (KV append and the GEMVs).
  double gap_ms = 0, attn_ms = 0, gemv_ms = 0;
  int n_sparse = 0, n_next = 0;
  std::string lines;
  for (size_t i = 0; i < tl.size(); ++i) {
    const auto& t = tl[i];
    if (t.attend >= 0 && t.queries >= 0) waited += t.attend - t.queries;
    if (t.select_end >= 0) select_ms += t.select_end - t.select_begin;
    if (t.recall_end >= 0) recall_ms += t.recall_end - t.recall_begin, last_recall = std::max(last_recall, t.recall_end);
    if (t.sparse && t.attend >= 0) {
      gap_ms += t.attend - t.queries;
      attn_ms += t.attended - t.attend;
      ++n_sparse;
      if (i + 1 < tl.size() && tl[i + 1].queries >= 0) gemv_ms += tl[i + 1].queries - t.attended, ++n_next;
    }
    lines += absl::StrFormat("    L%-2d %s queries %6.3f attend %6.3f attended %6.3f | select %6.3f-%6.3f | recall %6.3f-%6.3f\n",
                             t.layer, t.sparse ? "s" : "d", t.queries, t.attend, t.attended, t.select_begin, t.select_end,
                             t.recall_begin, t.recall_end);
  }
  Note(absl::StrFormat("%s timeline%s (ms from the step's first Select; a step is %.3f ms): attention waited for "
                       "recalls %.3f ms in all; selections %.3f ms and recalls %.3f ms of stream time; the last "
                       "recall ended at %.3f; per sparse layer (us): to attend %.1f, attention %.1f, append + GEMVs "
                       "%.1f\n%s",
                       tag, hold != nullptr ? " with the device held until the step was enqueued" : "", step_ms,
                       waited, select_ms, recall_ms, last_recall, 1e3 * gap_ms / std::max(1, n_sparse),
                       1e3 * attn_ms / std::max(1, n_sparse), 1e3 * gemv_ms / std::max(1, n_next), lines));
}

// Appends `tokens` rows of random K/V to every layer, `chunk` at a time, committing each chunk. `settle_every`
// > 0 calls FinishAppend on a recall context every that many tokens (incremental clustering).
void FillRandom(CudaBackend* gpu, const ModelConfig& c, KvContext* kv, int64_t tokens, int64_t chunk, uint64_t seed,
                CudaRecallKvContext* recall = nullptr, int64_t settle_every = 0) {
  Tensor k = Check(gpu->Allocate(DType::kBF16, Shape{chunk, c.num_kv_heads, c.head_dim}), "alloc k");
  Tensor v = Check(gpu->Allocate(DType::kBF16, Shape{chunk, c.num_kv_heads, c.head_dim}), "alloc v");
  int64_t done = 0, since = 0;
  while (done < tokens) {
    const int64_t n = std::min(chunk, tokens - done);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const uint64_t s = seed * 1000003 + static_cast<uint64_t>(done / chunk) * 131 + l;
      BENCH_CHECK(cuda::FillUniformBf16(static_cast<bf16*>(k.data()), n * c.num_kv_heads * c.head_dim, s, 1.0f, gpu->stream()));
      BENCH_CHECK(cuda::FillUniformBf16(static_cast<bf16*>(v.data()), n * c.num_kv_heads * c.head_dim, s + 7, 1.0f, gpu->stream()));
      BENCH_CHECK(kv->Append(static_cast<int>(l), k.view().Rows(0, n), v.view().Rows(0, n)));
    }
    BENCH_CHECK(kv->Commit(n));
    done += n;
    since += n;
    if (recall != nullptr && settle_every > 0 && since >= settle_every) {
      BENCH_CHECK(recall->FinishAppend());
      since = 0;
    }
  }
  BENCH_CHECK(gpu->Synchronize());
}

// One layer's clustering with the GPU otherwise idle: KMeansRun over random bf16 keys (heads x n points of dim),
// C clusters, `iterations` rounds and the final relabel, no early stop: what the side stream runs per layer during
// a prefill, timed alone (milliseconds, mean of 3 after a warm-up run).
double KMeansAloneMs(int32_t heads, int32_t n, int32_t C, int32_t dim, int32_t iterations) {
  auto s = Check(cuda::Stream::Create(), "stream");
  auto keys = Check(cuda::DeviceBuffer::Create(size_t(heads) * n * dim * 2), "keys");
  auto cent = Check(cuda::DeviceBuffer::Create(size_t(heads) * C * dim * 4), "centroids");
  auto labels = Check(cuda::DeviceBuffer::Create(size_t(heads) * n * 4), "labels");
  auto sizes = Check(cuda::DeviceBuffer::Create(size_t(heads) * C * 4), "sizes");
  const size_t ws_bytes = cuda::KMeansWorkspaceBytes(heads, n, C, dim);
  auto ws = Check(cuda::DeviceBuffer::Create(ws_bytes), "workspace");
  BENCH_CHECK(cuda::FillUniformBf16(keys.as<bf16>(), int64_t(heads) * n * dim, 21, 1.0f, s.get()));
  const cuda::KMeansPoints pts{keys.as<bf16>(), int64_t(n) * dim, dim, heads, n, dim};
  auto e0 = Check(cuda::Event::Create(true), "event"), e1 = Check(cuda::Event::Create(true), "event");
  for (int rep = 0; rep < 2; ++rep) {
    BENCH_CHECK(cuda::FillUniformF32(cent.as<float>(), int64_t(heads) * C * dim, 22, 1.0f, s.get()));
    BENCH_CHECK(e0.Record(s.get()));
    const int runs = rep == 0 ? 1 : 3;
    for (int r = 0; r < runs; ++r) {
      BENCH_CHECK(cuda::KMeansRun(pts, C, iterations, cent.as<float>(), labels.as<int32_t>(), sizes.as<int32_t>(),
                                  ws.data(), ws_bytes, s.get()));
    }
    BENCH_CHECK(e1.Record(s.get()));
    BENCH_CHECK(s.Synchronize());
    if (rep == 1) return Check(cuda::Event::ElapsedMs(e0, e1), "ms") / runs;
  }
  return 0;
}

// The clusterings of a prefill of ctx tokens into kv, timed alone (KMeansAloneMs: same shape, cluster count and
// rounds), as a share of the prefill's wall time. The side stream's elapsed time during the prefill also counts its
// waits for SMs held by long prefill CTAs.
double KMeansAloneShare(const ModelConfig& config, const RecallOptions& o, const CudaRecallKvContext& kv, int64_t ctx,
                        double prefill_s) {
  const int32_t older = static_cast<int32_t>(ctx - o.policy.sink - kv.tail_rows(2));
  const double ms = KMeansAloneMs(config.num_kv_heads, older, kv.num_clusters(2), config.head_dim,
                                  o.policy.kmeans_iterations);
  Note(absl::StrFormat("k-means alone: %.2f ms per layer (%d heads x %d keys, %d clusters, %d rounds), x %d layers", ms,
                       config.num_kv_heads, older, kv.num_clusters(2), o.policy.kmeans_iterations,
                       (int)kv.counters().clusterings));
  return kv.counters().clusterings * ms / 1e3 / prefill_s;
}

RecallOptions SparseOptions(int64_t max_tokens) {
  RecallOptions o;
  o.policy.kind = PolicyKind::kClusterKv;
  o.policy.budget = 2048;
  o.policy.kv_dtype = DType::kBF16;  // other policy fields: kvcache/policy_options.h defaults
  o.max_tokens = max_tokens;
  return o;
}

void ReportRecall(const std::string& tag, const RecallCounters& c, int steps) {
  const double hit = c.clusters_selected > 0 ? double(c.clusters_hit) / c.clusters_selected : 0;
  Note(absl::StrFormat("%s: %lld sparse selections (%lld synchronous), clusters attended %lld, hit %.3f, "
                       "recalled %lld (%.1f MB/step, %.1f copies/step), zero-copy %lld, host wait %.2f ms/step",
                       tag, (long long)c.sparse_selections, (long long)c.sync_selections,
                       (long long)c.clusters_selected, hit, (long long)c.clusters_recalled,
                       c.bytes_recalled / 1e6 / std::max(1, steps), double(c.copies) / std::max(1, steps),
                       (long long)c.clusters_zero_copy, c.wait_seconds * 1e3 / std::max(1, steps)));
  Report(tag + "_hit_rate", hit, "", hit, "clusters found in the device cache");
  Report(tag + "_recall_MB_per_step", c.bytes_recalled / 1e6 / std::max(1, steps), "MB", 0, "host->device per step");
}

void Run() {
  if (cuda::DeviceCount() == 0) {
    std::printf("SKIPPED: no CUDA device (cudaGetDeviceCount failed or returned 0)\n");
    return;
  }
  const double budget_s = std::getenv("LIVEKV_BENCH_BUDGET_S") ? std::atof(std::getenv("LIVEKV_BENCH_BUDGET_S")) : 240;
  auto gpu = Check(CudaBackend::Create(), "backend");
  Note("device: " + cuda::DescribeDevice(gpu->device_info()));
  cudaStream_t s = gpu->stream();

  // ---- Ceilings ----------------------------------------------------------------------------------------------
  double hbm = 0, h2d = 0;
  {
    const size_t bytes = size_t{1} << 30;
    auto a = Check(cuda::DeviceBuffer::Create(bytes), "a");
    auto b = Check(cuda::DeviceBuffer::Create(bytes), "b");
    BENCH_CHECK(cuda::FillUniformF32(a.as<float>(), bytes / 4, 1, 1.0f, s));
    auto e0 = Check(cuda::Event::Create(true), "e"), e1 = Check(cuda::Event::Create(true), "e");
    std::vector<double> t;
    for (int r = 0; r < 8; ++r) {
      BENCH_CHECK(e0.Record(s));
      for (int i = 0; i < 4; ++i) cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s);
      BENCH_CHECK(e1.Record(s));
      BENCH_CHECK(e1.Synchronize());
      t.push_back(Check(cuda::Event::ElapsedMs(e0, e1), "ms") / 4);
    }
    std::sort(t.begin(), t.end());
    hbm = 2.0 * bytes / (t[t.size() / 2] * 1e-3) / 1e9;
    Report("ceiling_hbm_d2d_copy", hbm, "GB/s", hbm / 3350, "H100 SXM spec 3350 GB/s");
    auto h = Check(cuda::PinnedHostBuffer::Create(size_t{256} << 20), "pinned");
    std::memset(h.data(), 1, h.bytes());
    t.clear();
    for (int r = 0; r < 5; ++r) {
      BENCH_CHECK(e0.Record(s));
      cudaMemcpyAsync(a.data(), h.data(), h.bytes(), cudaMemcpyHostToDevice, s);
      BENCH_CHECK(e1.Record(s));
      BENCH_CHECK(e1.Synchronize());
      t.push_back(Check(cuda::Event::ElapsedMs(e0, e1), "ms"));
    }
    std::sort(t.begin(), t.end());
    h2d = h.bytes() / (t[t.size() / 2] * 1e-3) / 1e9;
    Report("ceiling_pinned_h2d_256MiB", h2d, "GB/s", h2d / 63, "PCIe Gen5 x16 63 GB/s");
  }

  // ---- Decode kernel: check every variant against the first kernel on a 128k context (537 MB, beyond L2), time
  // them, and let the engine use the fastest correct one. -----------------------------------------------------------
  {
    const int hq = 32, hkv = 8, d = 128;
    const int64_t tokens = 131072;
    auto kv = Check(cuda::DeviceBuffer::Create(size_t(hkv) * tokens * d * 2 * 2), "kv");
    BENCH_CHECK(cuda::FillUniformBf16(kv.as<bf16>(), int64_t(hkv) * tokens * d * 2, 8, 1.0f, s));
    auto q = Check(cuda::DeviceBuffer::Create(size_t(hq) * d * 2), "q");
    BENCH_CHECK(cuda::FillUniformBf16(q.as<bf16>(), int64_t(hq) * d, 9, 2.0f, s));
    ContextKv c;
    c.dtype = DType::kBF16;
    c.heads.resize(hkv);
    for (int h = 0; h < hkv; ++h) {
      const bf16* k = kv.as<bf16>() + int64_t(h) * tokens * d * 2;
      c.heads[h].push_back(KvRun{k, k + tokens * d, int32_t(tokens), 0});
    }
    struct Variant {
      cuda::DecodeKernel kernel;
      int stages;
      const char* name;
    };
    const Variant variants[] = {{cuda::DecodeKernel::kLegacy, 0, "legacy"}, {cuda::DecodeKernel::kMma, 0, "mma"},
                                {cuda::DecodeKernel::kMma, 2, "mma_st2"}, {cuda::DecodeKernel::kMma, 4, "mma_st4"},
                                {cuda::DecodeKernel::kMmaRowLoads, 0, "mma_rowloads"},
                                {cuda::DecodeKernel::kPipelined, 0, "pipelined"},
                                {cuda::DecodeKernel::kPipelined, 2, "pipelined_st2"}};
    std::vector<float> ref;
    double best_ms = 1e30;
    const Variant* best = nullptr;
    auto e0 = Check(cuda::Event::Create(true), "e"), e1 = Check(cuda::Event::Create(true), "e");
    for (const Variant& v : variants) {
      cuda::KvPlanOptions o;
      o.target_items = std::max(1, cuda::DecodeCtasPerSm(d, hq / hkv, v.stages, v.kernel)) *
                       gpu->device_info().multiprocessors;
      const ContextKv* ptrs[] = {&c};
      cuda::KvPlan plan = Check(cuda::KvPlan::Create(ptrs, hkv, d, o), "plan");
      auto pdev = Check(cuda::DeviceBuffer::Create(plan.bytes().size()), "plan dev");
      BENCH_CHECK(cuda::CopyToDevice(pdev.data(), plan.bytes().data(), plan.bytes().size()));
      auto ws = Check(cuda::DeviceBuffer::Create(cuda::DecodeWorkspaceBytes(plan.num_items(), hq / hkv, d)), "ws");
      BENCH_CHECK(cuda::InitDecodeWorkspace(ws.data(), ws.bytes(), s));
      auto out = Check(cuda::DeviceBuffer::Create(size_t(hq) * d * 2), "out");
      cuda::DecodeAttentionArgs a;
      a.q = q.as<bf16>();
      a.out = out.as<bf16>();
      a.num_seqs = 1;
      a.num_q_heads = hq;
      a.num_kv_heads = hkv;
      a.head_dim = d;
      a.scale = 1.0f / std::sqrt(float(d));
      a.kernel = v.kernel;
      a.pipeline_stages = v.stages;
      // Poison the output, and read it back on the same stream: the backend's stream does not synchronise with
      // the legacy default stream that a plain cudaMemcpy would use.
      BENCH_CHECK(cuda::CudaStatus(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s), "poison"));
      absl::Status st = cuda::DecodeAttention(a, plan, pdev.data(), ws.data(), ws.bytes(), s);
      std::vector<uint16_t> raw(size_t(hq) * d);
      if (st.ok()) {
        st = cuda::CudaStatus(cudaMemcpyAsync(raw.data(), out.data(), raw.size() * 2, cudaMemcpyDeviceToHost, s), "down");
      }
      if (st.ok()) st = cuda::CudaStatus(cudaStreamSynchronize(s), "sync");
      if (!st.ok()) {
        Note(std::string("decode kernel ") + v.name + ": " + st.ToString());
        continue;
      }
      std::vector<float> got(raw.size());
      for (size_t i = 0; i < raw.size(); ++i) got[i] = BF16ToF32(raw[i]);
      // Against the first (legacy) kernel: relative L2 error, bf16 outputs of different summation orders differ
      // by about 2^-8 of the values.
      double err2 = 0, ref2 = 0, err = 0;
      if (ref.empty()) ref = got;
      for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::isfinite(got[i]) ? double(got[i]) - ref[i] : INFINITY;
        err = std::max(err, std::abs(e));
        err2 += e * e;
        ref2 += double(ref[i]) * ref[i];
      }
      const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
      const bool ok = rel <= 2e-2;
      std::vector<double> t;
      for (int r = 0; r < 7; ++r) {
        BENCH_CHECK(e0.Record(s));
        for (int i = 0; i < 10; ++i) BENCH_CHECK(cuda::DecodeAttention(a, plan, pdev.data(), ws.data(), ws.bytes(), s));
        BENCH_CHECK(e1.Record(s));
        BENCH_CHECK(e1.Synchronize());
        t.push_back(Check(cuda::Event::ElapsedMs(e0, e1), "ms") / 10);
      }
      std::sort(t.begin(), t.end());
      const double ms = t[t.size() / 2];
      const double gbs = double(hkv) * tokens * d * 4 / (ms * 1e-3) / 1e9;
      Report(std::string("decode_kernel_128k_") + v.name, gbs, "GB/s", gbs / hbm,
             absl::StrFormat("measured HBM copy; vs legacy: rel L2 %.1e, max |diff| %.1e (%s)", rel, err,
                             ok ? "ok" : "WRONG"));
      if (ok && ms < best_ms) best_ms = ms, best = &v;
    }
    if (best != nullptr) {
      gpu->set_decode_kernel(best->kernel, best->stages);
      Note(std::string("the engine decodes with the ") + best->name + " kernel");
    }
  }

  // ---- Model ---------------------------------------------------------------------------------------------------
  ModelConfig config = Check(PresetConfig("llama3-8b"), "preset");
  config.max_position_embeddings = 1 << 21;  // dummy weights: RoPE (llama3 scaling) is defined at any position
  auto t0 = Clock::now();
  ModelWeights weights = Check(CudaDummyWeights(config, 1, gpu.get()), "weights");
  const double weight_bytes = static_cast<double>(weights.nbytes());
  Note(absl::StrFormat("dummy weights on the device: %.2f GB in %.1f s", weight_bytes / 1e9,
                       std::chrono::duration<double>(Clock::now() - t0).count()));
  auto model = Check(Transformer::Create(config, std::move(weights), gpu.get(), TransformerOptions{.max_chunk = 4096}),
                     "model");
  const double floor_ms = weight_bytes / (hbm * 1e9) * 1e3;
  Report("weight_read_floor_ms", floor_ms, "ms", 1.0, absl::StrFormat("%.2f GB / measured HBM copy", weight_bytes / 1e9));
  std::vector<float> logits;
  {
    auto kv = Check(DenseKvCache::Create(config, gpu.get(), DType::kBF16, 64), "kv");
    // Decode-step fusion, programmatic launch and the plans' placement: all off (plans copied in the stream);
    // fusion only; fusion and programmatic launch; the same with plans copied aside; then the default (used below).
    const DecodePlans default_plans = gpu->decode_plans();
    for (int mode = 0; mode < 5; ++mode) {
      gpu->set_fuse_decode_ops(mode >= 1);
      gpu->set_programmatic_launch(mode >= 2);
      gpu->set_decode_plans(mode == 4 ? default_plans : mode == 3 ? DecodePlans::kAside : DecodePlans::kInStream);
      logits.clear();
      const StepStats st = Decode(*model, kv.get(), &logits, 3, 20);
      const char* tag = mode == 0   ? "_unfused_nopdl"
                        : mode == 1 ? "_fused_nopdl"
                        : mode == 2 ? "_fused_pdl_copyplans"
                        : mode == 3 ? "_fused_pdl_asideplans"
                                    : "";
      Report(std::string("decode_ctx0_step_ms") + tag, st.median_ms, "ms", st.median_ms / floor_ms,
             mode == 4 ? "weight-read floor (no KV to read; fused GEMVs, programmatic launch, default plans)"
                       : "weight-read floor (no KV to read)");
    }
  }
  const size_t free_after_model = DeviceFree();

  double dense_2k_ms = 0;
  {
    // What a sparse step would cost if selection and recall were free: the dense path over as many tokens as a
    // budget-2048 step attends per head (2048 + the token), every layer dense, KV already on the device.
    auto kv = Check(DenseKvCache::Create(config, gpu.get(), DType::kBF16, 2048 + 64), "dense kv 2k");
    FillRandom(gpu.get(), config, kv.get(), 2048, 2048, 9);
    logits.clear();
    const StepStats st = Decode(*model, kv.get(), &logits, 3, 20);
    dense_2k_ms = st.median_ms;
    Report("decode_dense_2k_step_ms", st.median_ms, "ms", st.median_ms / floor_ms,
           "weight-read floor (the tokens a budget-2048 step attends, all on the device: the sparse step's floor)");
  }
  std::vector<std::pair<int64_t, double>> dense_ms, sparse_ms;
  for (int64_t ctx : {int64_t{32768}, int64_t{131072}}) {
    const std::string tag = ctx == 32768 ? "32k" : "128k";
    // Dense: every token on the device, every token attended.
    double dense_prefill_s = 0;
    {
      auto kv = Check(DenseKvCache::Create(config, gpu.get(), DType::kBF16, ctx + 64), "dense kv");
      if (ctx == 32768) {
        // The same 32k prefill as the sparse path's below, without clustering: the baseline for its overhead.
        dense_prefill_s = PrefillSeconds(*model, gpu.get(), RandomPrompt(config, ctx), kv.get(), &logits);
        Report("prefill_32k_dense_s", dense_prefill_s, "s", 0, "wall time, dense KV cache (no clustering)");
      } else {
        FillRandom(gpu.get(), config, kv.get(), ctx, 4096, 3);
      }
      logits.clear();
      const StepStats st = Decode(*model, kv.get(), &logits, 3, 20);
      dense_ms.push_back({ctx, st.median_ms});
      Report("decode_dense_" + tag + "_step_ms", st.median_ms, "ms", st.median_ms / floor_ms, "weight-read floor");
      // The decode attention inside the step (programmatic launch hides its start and merge behind the kernels
      // around it): the KV bytes the context reads beyond the 2k step's, over the step time they add.
      const double extra_gb = double(config.num_layers) * config.num_kv_heads * config.head_dim * 2 * 2 * (ctx - 2048) / 1e9;
      const double marginal = extra_gb / ((st.median_ms - dense_2k_ms) * 1e-3);
      Report("decode_dense_" + tag + "_attention_in_step", marginal, "GB/s", marginal / hbm,
             "measured HBM copy (KV bytes beyond the 2k step's / the step time they add)");
    }
    // Sparse recall path.
    {
      RecallOptions o = SparseOptions(ctx + 4096);
      auto kv = Check(CudaRecallKvContext::Create(config, o, gpu.get()), "recall kv");
      if (ctx == 32768) {
        // A real prefill of 32k random tokens: ClusterKV's clustering on the side stream, layer by layer.
        const std::vector<int32_t> prompt = RandomPrompt(config, ctx);
        kv->ExpectInputEnd(ctx);
        const double prefill_s = PrefillSeconds(*model, gpu.get(), prompt, kv.get(), &logits);
        const RecallCounters& c = kv->counters();
        Note(absl::StrFormat("prefill 32k: %.2f s (%d layer clusterings, k-means %.1f ms GPU, store %.3f s host)",
                             prefill_s, (int)c.clusterings, c.kmeans_ms, c.clustering_finish_seconds));
        Report("prefill_32k_s", prefill_s, "s", 0, "wall time, k-means overlapped on a side stream");
        Report("kmeans_during_prefill_32k", c.kmeans_ms / 1e3 / prefill_s, "ratio", c.kmeans_ms / 1e3 / prefill_s,
               "k-means time on its side stream (overlapped) / prefill time, goal <= 0.03");
        Report("clustering_prefill_overhead_32k", prefill_s / dense_prefill_s - 1, "ratio", prefill_s / dense_prefill_s - 1,
               "(prefill with clustering and store) / dense prefill - 1");
        const double alone = KMeansAloneShare(config, o, *kv, ctx, prefill_s);
        Report("kmeans_alone_32k", alone, "ratio", alone, "the same clusterings' GPU time alone / prefill time, goal <= 0.03");
        Report("cluster_store_32k_s", c.clustering_finish_seconds, "s", c.clustering_finish_seconds / prefill_s,
               "host time of the clusterings' store and publish / prefill time (the stores overlap the last chunk)");
        {
          // ClusterKV's own setting at 32k (seeds.md 1.3): 400 clusters per head, here 82 tokens per cluster.
          RecallOptions o400 = SparseOptions(ctx + 4096);
          o400.policy.tokens_per_cluster = 82;
          auto kv400 = Check(CudaRecallKvContext::Create(config, o400, gpu.get()), "recall kv, 400 clusters");
          kv400->ExpectInputEnd(ctx);
          const double prefill400_s = PrefillSeconds(*model, gpu.get(), prompt, kv400.get(), &logits);
          const RecallCounters& c400 = kv400->counters();
          Note(absl::StrFormat("prefill 32k, %d clusters per head: %.2f s (k-means %.1f ms GPU)", kv400->num_clusters(2),
                               prefill400_s, c400.kmeans_ms));
          Report("kmeans_during_prefill_32k_C400", c400.kmeans_ms / 1e3 / prefill400_s, "ratio",
                 c400.kmeans_ms / 1e3 / prefill400_s,
                 "k-means (ClusterKV's 400 clusters per head) on its side stream / prefill time, goal <= 0.03");
          const double alone400 = KMeansAloneShare(config, o400, *kv400, ctx, prefill400_s);
          Report("kmeans_alone_32k_C400", alone400, "ratio", alone400,
                 "the same clusterings' GPU time alone (400 clusters per head) / prefill time, goal <= 0.03");
          logits.clear();
        }
      } else {
        kv->ExpectInputEnd(ctx);
        const auto f0 = Clock::now();
        FillRandom(gpu.get(), config, kv.get(), ctx, 4096, 4);
        const RecallCounters& c = kv->counters();
        Note(absl::StrFormat("filled %lld random tokens + clustered in %.1f s (k-means %.1f ms GPU, store %.2f s)",
                             (long long)ctx, std::chrono::duration<double>(Clock::now() - f0).count(), c.kmeans_ms,
                             c.clustering_finish_seconds));
      }
      Note(absl::StrFormat("sparse %s: %d clusters per head (layer 2), tail %lld rows, pinned %.2f GB, device %.2f GB",
                           tag.c_str(), kv->num_clusters(2), (long long)kv->tail_rows(2), kv->host_bytes_in_use() / 1e9,
                           kv->device_bytes() / 1e9));
      kv->ResetCounters();
      const int steps = 20;
      const StepStats st = Decode(*model, kv.get(), &logits, 3, steps);
      sparse_ms.push_back({ctx, st.median_ms});
      Report("decode_sparse_" + tag + "_step_ms", st.median_ms, "ms", st.median_ms / floor_ms,
             "weight-read floor, goal <= 1.10 (greedy tokens of random weights)");
      Report("decode_sparse_" + tag + "_step_p90_ms", st.p90_ms, "ms", st.p90_ms / floor_ms, "weight-read floor");
      ReportRecall("sparse_" + tag, kv->counters(), steps + 3);
      PrintTimeline("sparse_" + tag, *model, kv.get(), &logits, st.median_ms);
      PrintTimeline("sparse_" + tag, *model, kv.get(), &logits, st.median_ms, gpu->stream());
      const double dense = dense_ms.back().second;
      Report("speedup_sparse_vs_dense_" + tag, dense / st.median_ms, "x", dense / st.median_ms,
             ctx == 32768 ? "our dense path, goal >= 1.2" : "our dense path, goal >= 1.9");
      // Alike consecutive queries (one token repeated): what speculation and the device cache are built for.
      kv->ResetCounters();
      const StepStats rep = Decode(*model, kv.get(), &logits, 3, steps, /*repeat=*/1000);
      Report("decode_sparse_" + tag + "_repeat_step_ms", rep.median_ms, "ms", rep.median_ms / floor_ms,
             "weight-read floor, goal <= 1.10 (a repeated token: alike queries)");
      ReportRecall("sparse_" + tag + "_repeat", kv->counters(), steps + 3);
      Report("speedup_sparse_repeat_vs_dense_" + tag, dense / rep.median_ms, "x", dense / rep.median_ms,
             ctx == 32768 ? "our dense path, goal >= 1.2" : "our dense path, goal >= 1.9");
      if (ctx == 32768) {
        for (RecallCopy copy : {RecallCopy::kBatch}) {
          kv->set_copy(copy);
          kv->ResetCounters();
          const StepStats c = Decode(*model, kv.get(), &logits, 3, 10);
          Report("decode_sparse_32k_copy_engine_step_ms", c.median_ms, "ms", c.median_ms / floor_ms,
                 "weight-read floor (recall by cudaMemcpyBatchAsync, greedy tokens)");
          ReportRecall("sparse_32k_copy_engine", kv->counters(), 13);
        }
        kv->set_copy(RecallCopy::kGather);
        kv->set_speculative(false);
        kv->ResetCounters();
        const StepStats ns = Decode(*model, kv.get(), &logits, 3, 10);
        Report("decode_sparse_32k_nospec_step_ms", ns.median_ms, "ms", ns.median_ms / floor_ms,
               "weight-read floor (synchronous selection, greedy tokens)");
        ReportRecall("sparse_32k_nospec", kv->counters(), 13);
        kv->set_speculative(true);
      }
      // The recall gather's shape (the default is RecallOptions::gather_ctas x gather_threads): fewer outstanding
      // PCIe loads leave the step's weight stream more of the memory system; enough must stay for the link's rate.
      for (auto [ctas, threads] : {std::pair<int, int>{32, 512}, {8, 512}, {4, 512}, {2, 512}, {8, 256}, {4, 256},
                                   {8, 128}}) {
        if (ctx != 32768 && threads != 256) continue;
        kv->set_gather(ctas, threads);
        kv->ResetCounters();
        const StepStats g = Decode(*model, kv.get(), &logits, 3, 10);
        Report(absl::StrFormat("decode_sparse_%s_gather_%dx%d_step_ms", tag.c_str(), ctas, threads), g.median_ms, "ms",
               g.median_ms / floor_ms, "weight-read floor (recall gather of CTAs x threads, greedy tokens)");
        ReportRecall(absl::StrFormat("sparse_%s_gather_%dx%d", tag.c_str(), ctas, threads), kv->counters(), 13);
      }
      kv->set_gather(o.gather_ctas, o.gather_threads);
      // The attention plans' placement (CudaBackendOptions::decode_plans): the kernel reads them over a PCIe link
      // the recall keeps busy (zero-copy), or from device memory, copied in the stream or aside.
      {
        const DecodePlans default_plans = gpu->decode_plans();
        for (DecodePlans plans : {DecodePlans::kZeroCopy, DecodePlans::kInStream, DecodePlans::kAside}) {
          gpu->set_decode_plans(plans);
          kv->ResetCounters();
          const StepStats g = Decode(*model, kv.get(), &logits, 3, 10);
          const std::string name = PlansName(plans);
          Report(absl::StrFormat("decode_sparse_%s_plans_%s_step_ms", tag.c_str(), name), g.median_ms, "ms",
                 g.median_ms / floor_ms, absl::StrFormat("weight-read floor (attention plans %s, greedy tokens)", name));
          if (ctx == 32768) PrintTimeline("sparse_" + tag + "_plans_" + name, *model, kv.get(), &logits, g.median_ms);
        }
        gpu->set_decode_plans(default_plans);
      }
      // Attention items of other lengths (CudaBackendOptions::decode_min_tokens_per_item, default 128): a
      // budget-2048 slot in 33 or 8 items instead of 16.
      {
        const int default_min = gpu->decode_min_tokens_per_item();
        for (int min_tokens : {64, 256}) {
          gpu->set_decode_min_tokens_per_item(min_tokens);
          kv->ResetCounters();
          const StepStats g = Decode(*model, kv.get(), &logits, 3, 10);
          Report(absl::StrFormat("decode_sparse_%s_min%d_step_ms", tag.c_str(), min_tokens), g.median_ms, "ms",
                 g.median_ms / floor_ms, "weight-read floor (attention items of at least that many tokens)");
        }
        gpu->set_decode_min_tokens_per_item(default_min);
      }
      // The recall by the Tensor Memory Accelerator (bulk copies: no SM loads) with 2, 4 and 8 CTAs.
      kv->set_copy(RecallCopy::kBulk);
      for (int ctas : {2, 4, 8}) {
        kv->set_gather(ctas, o.gather_threads);
        kv->ResetCounters();
        const StepStats g = Decode(*model, kv.get(), &logits, 3, 10);
        Report(absl::StrFormat("decode_sparse_%s_bulk_%d_step_ms", tag.c_str(), ctas), g.median_ms, "ms",
               g.median_ms / floor_ms, "weight-read floor (recall by bulk copies of that many CTAs, greedy tokens)");
        ReportRecall(absl::StrFormat("sparse_%s_bulk_%d", tag.c_str(), ctas), kv->counters(), 13);
        if (ctas == 4) PrintTimeline("sparse_" + tag + "_bulk_4", *model, kv.get(), &logits, g.median_ms);
      }
      kv->set_copy(RecallCopy::kGather);
      kv->set_gather(o.gather_ctas, o.gather_threads);
      if (ctx == 32768) {
        // The select and recall streams at the default priority (as before RecallOptions::prioritize_recall).
        RecallOptions plain = SparseOptions(ctx + 4096);
        plain.prioritize_recall = false;
        auto kv3 = Check(CudaRecallKvContext::Create(config, plain, gpu.get()), "recall kv (default priority)");
        kv3->ExpectInputEnd(ctx);
        FillRandom(gpu.get(), config, kv3.get(), ctx, 4096, 7);
        kv3->ResetCounters();
        const StepStats p = Decode(*model, kv3.get(), &logits, 3, 10);
        Report("decode_sparse_32k_default_priority_step_ms", p.median_ms, "ms", p.median_ms / floor_ms,
               "weight-read floor (select and recall streams at default priority, greedy tokens)");
        ReportRecall("sparse_32k_default_priority", kv3->counters(), 13);
      }
      if (ctx == 32768) {
        // A device cache that holds the whole context (cache_tokens_per_head = context): once warm, nothing is
        // recalled, so the step shows what selection, attention and the recall machinery cost without PCIe traffic.
        RecallOptions big = SparseOptions(ctx + 4096);
        big.cache_tokens_per_head = static_cast<int32_t>(ctx);
        auto kv2 = Check(CudaRecallKvContext::Create(config, big, gpu.get()), "recall kv (big cache)");
        kv2->ExpectInputEnd(ctx);
        FillRandom(gpu.get(), config, kv2.get(), ctx, 4096, 6);
        Decode(*model, kv2.get(), &logits, 20, 1);  // warm the cache
        kv2->ResetCounters();
        const StepStats b = Decode(*model, kv2.get(), &logits, 2, 15);
        Report("decode_sparse_32k_wholecache_step_ms", b.median_ms, "ms", b.median_ms / floor_ms,
               "weight-read floor (device cache = whole context, greedy tokens)");
        ReportRecall("sparse_32k_wholecache", kv2->counters(), 17);
        PrintTimeline("sparse_32k_wholecache", *model, kv2.get(), &logits, b.median_ms);
        const DecodePlans default_plans = gpu->decode_plans();
        for (DecodePlans plans : {DecodePlans::kZeroCopy, DecodePlans::kAside}) {
          gpu->set_decode_plans(plans);
          const StepStats w = Decode(*model, kv2.get(), &logits, 2, 10);
          const std::string name = PlansName(plans);
          Report("decode_sparse_32k_wholecache_plans_" + name + "_step_ms", w.median_ms, "ms", w.median_ms / floor_ms,
                 absl::StrFormat("weight-read floor (device cache = whole context, attention plans %s)", name));
        }
        gpu->set_decode_plans(default_plans);
      }
      if (ctx == 131072) {
        const double host_per_token = double(kv->host_bytes_in_use()) / ctx;
        Report("sparse_host_bytes_per_token", host_per_token, "B", host_per_token / (30.0 * 8 * 128 * 2 * 2),
               "pinned bytes per token / payload (page padding of clusters)");
        // ---- Longest context on this machine, from memory per token ----------------------------------------
        const double dense_per_token = 2.0 * config.num_layers * config.num_kv_heads * config.head_dim * 2;
        const double margin = 2e9;
        const double dense_max = (free_after_model - margin) / dense_per_token;
        int dense_layers = 2;
        const double sparse_dev_per_token = 2.0 * dense_layers * config.num_kv_heads * config.head_dim * 2 +
                                            (config.num_layers - dense_layers) * config.num_kv_heads * config.head_dim * 4.0 / 32;
        kv.reset();
        const double host_avail = double(MemAvailableBytes());
        const double sparse_max = std::min((free_after_model - margin - 1.5e9) / sparse_dev_per_token,
                                           (host_avail - 8e9) / host_per_token);
        Note(absl::StrFormat("memory: device free after model %.1f GB, host MemAvailable %.1f GB", free_after_model / 1e9,
                             host_avail / 1e9));
        Report("longest_context_dense_tokens", dense_max, "tokens", 1.0, "device memory / 128 KiB per token");
        Report("longest_context_sparse_tokens", sparse_max, "tokens", sparse_max / dense_max,
               absl::StrFormat("min(device / %.0f B, host / %.0f B per token); ratio vs dense", sparse_dev_per_token,
                               host_per_token));
      }
    }
  }

  // ---- A decode step of the sparse mode beyond the dense mode's longest context ----------------------------
  const double demo_budget = budget_s * 0.45;
  if (Elapsed() > demo_budget) {
    Note(absl::StrFormat("skipping the long-context demonstration: %.0f s elapsed (budget %.0f s)", Elapsed(), demo_budget));
  } else {
    const double dense_per_token = 2.0 * config.num_layers * config.num_kv_heads * config.head_dim * 2;
    const int64_t dense_max = static_cast<int64_t>((free_after_model - 2e9) / dense_per_token);
    // Larger clusters (128 tokens) pad less; two k-means iterations keep the set-up short (memory is the point).
    RecallOptions o = SparseOptions(0);
    o.policy.tokens_per_cluster = 128;
    o.policy.kmeans_iterations = 2;
    o.host_slack = 1.25;
    const double host_per_token = 30.0 * 8 * 128 * 2 * 2 * o.host_slack;
    const double host_avail = double(MemAvailableBytes());
    int64_t len = static_cast<int64_t>(std::min(0.7 * host_avail / host_per_token, 4.0 * dense_max));
    len = len / 65536 * 65536;
    Note(absl::StrFormat("long-context demonstration: %lld tokens (dense max %lld), pinned pool %.1f GB of %.1f GB available",
                         (long long)len, (long long)dense_max, len * host_per_token / 1e9, host_avail / 1e9));
    if (len > dense_max) {
      o.max_tokens = 0;  // pinned arenas sized to each clustering: no slack
      const auto c0 = Clock::now();
      auto kv = CudaRecallKvContext::Create(config, o, gpu.get());
      if (!kv.ok()) {
        Note("long-context demonstration: " + kv.status().ToString());
      } else {
        Note(absl::StrFormat("pinned pool allocated in %.1f s", std::chrono::duration<double>(Clock::now() - c0).count()));
        FillRandom(gpu.get(), config, kv->get(), len, 8192, 6, kv->get(), 65536);
        BENCH_CHECK((*kv)->FinishAppend());
        Note(absl::StrFormat("filled %lld tokens: %d clusters per head, pinned %.1f GB, device free %.1f GB", (long long)len,
                             (*kv)->num_clusters(2), (*kv)->host_bytes_in_use() / 1e9, DeviceFree() / 1e9));
        logits.clear();
        const StepStats st = Decode(*model, kv->get(), &logits, 1, 3);
        bool finite = true;
        for (float x : logits) finite = finite && std::isfinite(x);
        Report("decode_sparse_longest_step_ms", st.median_ms, "ms", st.median_ms / floor_ms,
               absl::StrFormat("weight-read floor, at %lld tokens (%.2fx the dense maximum), logits %s", (long long)len,
                               double(len) / dense_max, finite ? "finite" : "NOT FINITE"));
      }
    }
  }

  std::printf("\n%-40s %12s %-8s %7s  %s\n", "benchmark", "value", "unit", "ratio", "ceiling");
  for (const Row& r : rows) {
    std::printf("%-40s %12.3f %-8s %7.3f  %s\n", r.name.c_str(), r.value, r.unit.c_str(), r.ratio, r.vs.c_str());
  }
}

}  // namespace
}  // namespace livekv

int main() {
  livekv::Run();
  return 0;
}
