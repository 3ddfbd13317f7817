// GPU kernel benchmarks. Each figure is printed next to a ceiling measured in the same run on the same device
// (device-to-device copy for memory-bound kernels, a large cuBLASLt GEMM for compute-bound ones), so results
// are ratios. Timing: CUDA events around a batch of launches after a warm-up, median of repetitions; inputs are
// random (never zeros) and memory-bound cases rotate over buffers larger than L2 where the working set is small.
//
// Output: one "BENCH <name> <value> <unit> ratio <r> vs <ceiling>" line per figure, then a summary table.
// Exits 0 with a SKIPPED line where there is no GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cuda/bench/fill.h"
#include "cuda/ops/attention.h"
#include "cuda/ops/elementwise.h"
#include "cuda/ops/gemm.h"
#include "cuda/ops/kmeans.h"
#include "cuda/ops/kv_layout.h"
#include "cuda/ops/sampling.h"
#include "cuda/ops/selection.h"
#include "cuda/runtime/blas_handle.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/launch.h"
#include "cuda/runtime/stream.h"

namespace livekv {
namespace cuda {
namespace {

using bf16 = __nv_bfloat16;

#define BENCH_CHECK(expr)                                                          \
  do {                                                                             \
    const absl::Status bench_status_ = (expr);                                     \
    if (!bench_status_.ok()) {                                                     \
      std::fprintf(stderr, "FAILED: %s: %s\n", #expr, bench_status_.ToString().c_str()); \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

DeviceBuffer Alloc(size_t bytes) {
  auto b = DeviceBuffer::Create(bytes);
  BENCH_CHECK(b.status());
  return std::move(*b);
}

struct Row {
  std::string name;
  double value;
  std::string unit;
  double ratio;
  std::string vs;
};
std::vector<Row> rows;

void Report(const std::string& name, double value, const std::string& unit, double ratio, const std::string& vs) {
  rows.push_back({name, value, unit, ratio, vs});
  std::printf("BENCH %-34s %10.2f %-8s ratio %5.2f vs %s\n", name.c_str(), value, unit.c_str(), ratio, vs.c_str());
  std::fflush(stdout);
}

// Median over `reps` of the mean time per call of `iters` back-to-back calls, in milliseconds.
double TimeMs(cudaStream_t s, const std::function<void(int)>& fn, int iters = 20, int reps = 7) {
  for (int i = 0; i < 3; ++i) fn(i);
  auto start = Event::Create(true), end = Event::Create(true);
  BENCH_CHECK(start.status());
  BENCH_CHECK(end.status());
  std::vector<double> t;
  int call = 0;
  for (int r = 0; r < reps; ++r) {
    BENCH_CHECK(start->Record(s));
    for (int i = 0; i < iters; ++i) fn(call++);
    BENCH_CHECK(end->Record(s));
    BENCH_CHECK(end->Synchronize());
    auto ms = Event::ElapsedMs(*start, *end);
    BENCH_CHECK(ms.status());
    t.push_back(*ms / iters);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The same figure with the `iters` calls captured once into a CUDA graph and the graph launched `reps` times: what
// the calls cost the device when the host's launch path is out of the way (a decode step captured as a graph, as
// serving engines run batch-1 decode). Calls made with programmatic dependent launch keep it inside the graph.
double TimeGraphMs(cudaStream_t s, const std::function<void(int)>& fn, int iters = 20, int reps = 7) {
  cudaGraph_t graph = nullptr;
  BENCH_CHECK(CudaStatus(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "begin capture"));
  for (int i = 0; i < iters; ++i) fn(i);
  BENCH_CHECK(CudaStatus(cudaStreamEndCapture(s, &graph), "end capture"));
  cudaGraphExec_t exec = nullptr;
  BENCH_CHECK(CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "instantiate graph"));
  const double ms = TimeMs(s, [&](int) { BENCH_CHECK(CudaStatus(cudaGraphLaunch(exec, s), "launch graph")); }, 1, reps);
  BENCH_CHECK(CudaStatus(cudaGraphExecDestroy(exec), "destroy graph exec"));
  BENCH_CHECK(CudaStatus(cudaGraphDestroy(graph), "destroy graph"));
  return ms / iters;
}

// LIVEKV_BENCH_SECTIONS (words among gemv gemm decode prefill kmeans selection recall elementwise sampling; unset:
// all)
// picks the sections to run after the ceilings, e.g. to run one under compute-sanitizer; "sparse" runs the sparse
// part of the decode section alone (e.g. under ncu).
bool Wanted(const char* section) {
  const char* env = std::getenv("LIVEKV_BENCH_SECTIONS");
  if (env == nullptr || *env == '\0') return true;
  const std::string list = std::string(" ") + env + " ";
  std::string want = std::string(" ") + section + " ";
  std::string normalized = list;
  std::replace(normalized.begin(), normalized.end(), ',', ' ');
  return normalized.find(want) != std::string::npos;
}

// Pages of `page` tokens for `heads` KV heads, K rows then V rows (kvcache/page_layout.h), D = 128, bf16.
struct PagePool {
  DeviceBuffer buf;
  int64_t pages = 0;
  int page = 32, d = 128;
  size_t page_bytes() const { return size_t(2) * page * d * sizeof(bf16); }
  const bf16* K(int64_t p) const { return reinterpret_cast<const bf16*>(static_cast<uint8_t*>(buf.data()) + p * page_bytes()); }
  const bf16* V(int64_t p) const { return K(p) + page * d; }
};

PagePool MakePool(int64_t pages, cudaStream_t s, uint64_t seed) {
  PagePool p;
  p.pages = pages;
  p.buf = Alloc(pages * p.page_bytes());
  BENCH_CHECK(FillUniformBf16(p.buf.as<bf16>(), pages * p.page_bytes() / 2, seed, 1.0f, s));
  return p;
}

struct UploadedPlan {
  KvPlan plan;
  DeviceBuffer dev;
  PinnedHostBuffer host;  // mapped: the plan read zero-copy, as the engine's UploadRing::Stage hands it over
  const void* address(bool zero_copy) const { return zero_copy ? host.data() : dev.data(); }
};

UploadedPlan Upload(KvPlan plan) {
  const size_t bytes = std::max<size_t>(16, plan.bytes().size());
  auto host = PinnedHostBuffer::Create(bytes, /*mapped=*/true);
  BENCH_CHECK(host.status());
  UploadedPlan u{std::move(plan), Alloc(bytes), std::move(*host)};
  BENCH_CHECK(CopyToDevice(u.dev.data(), u.plan.bytes().data(), u.plan.bytes().size()));
  std::memcpy(u.host.data(), u.plan.bytes().data(), u.plan.bytes().size());
  return u;
}

void Run() {
  const int n = DeviceCount();
  if (n == 0) {
    std::printf("SKIPPED: no CUDA device (cudaGetDeviceCount failed or returned 0)\n");
    return;
  }
  auto info = GetDeviceInfo(0);
  BENCH_CHECK(info.status());
  std::printf("device: %s\n", DescribeDevice(*info).c_str());
  auto stream_or = Stream::Create();
  BENCH_CHECK(stream_or.status());
  Stream stream = std::move(*stream_or);
  cudaStream_t s = stream.get();

  // ---- Ceilings -----------------------------------------------------------------------------------------------
  const size_t copy_bytes = size_t{1} << 30;
  DeviceBuffer ca = Alloc(copy_bytes), cb = Alloc(copy_bytes);
  BENCH_CHECK(FillUniformF32(ca.as<float>(), copy_bytes / 4, 1, 1.0f, s));
  const double copy_ms = TimeMs(s, [&](int) {
    BENCH_CHECK(CudaStatus(cudaMemcpyAsync(cb.data(), ca.data(), copy_bytes, cudaMemcpyDeviceToDevice, s), "copy"));
  }, 5, 7);
  const double hbm = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;  // GB/s, read + write
  Report("ceiling_hbm_d2d_copy", hbm, "GB/s", hbm / 3350.0, "H100 SXM spec 3350 GB/s");

  auto blas_or = BlasHandle::Create();
  BENCH_CHECK(blas_or.status());
  BlasHandle blas = std::move(*blas_or);
  Gemm gemm(&blas);
  const int64_t G = 8192;
  DeviceBuffer gx = Alloc(G * G * 2), gw = Alloc(G * G * 2), go = Alloc(G * G * 2);
  BENCH_CHECK(FillUniformBf16(gx.as<bf16>(), G * G, 2, 1.0f, s));
  BENCH_CHECK(FillUniformBf16(gw.as<bf16>(), G * G, 3, 0.05f, s));
  const double gemm_ms = TimeMs(s, [&](int) {
    BENCH_CHECK(gemm.Linear({gx.as<bf16>(), G, G, gw.as<bf16>(), G, nullptr, go.data(), GemmOutput::kBf16}, s));
  }, 5, 5);
  const double gemm_tflops = 2.0 * G * G * G / (gemm_ms * 1e-3) / 1e12;
  Report("ceiling_gemm_bf16_8192", gemm_tflops, "TFLOP/s", gemm_tflops / 989.0, "H100 SXM spec 989 TFLOP/s");
  ca.Reset();
  cb.Reset();

  // ---- GEMM, decode-shaped (n = 1): weight-read bound. The GEMV kernel and cuBLASLt, Llama-3-8B's matrices. ----
  if (Wanted("gemv")) {
    for (auto [k, m] : {std::pair<int64_t, int64_t>{4096, 14336}, {4096, 6144}, {4096, 4096}, {14336, 4096}, {4096, 28672}}) {
      const int copies = static_cast<int>(std::max<int64_t>(2, (int64_t{1} << 30) / (m * k * 2)));  // > L2
      DeviceBuffer w = Alloc(copies * m * k * 2), x = Alloc(k * 2), o = Alloc(m * 4);
      BENCH_CHECK(FillUniformBf16(w.as<bf16>(), copies * m * k, 4, 0.05f, s));
      BENCH_CHECK(FillUniformBf16(x.as<bf16>(), k, 5, 1.0f, s));
      for (int mode = 0; mode < 3; ++mode) {  // GEMV, GEMV with programmatic launch (as in the engine), cuBLASLt
        const bool gemv = mode < 2;
        ScopedPdl pdl(mode == 1);
        gemm.set_use_gemv(gemv);
        const double ms = TimeMs(s, [&](int i) {
          BENCH_CHECK(gemm.Linear({x.as<bf16>(), 1, k, w.as<bf16>() + (i % copies) * m * k, m, nullptr, o.data(), GemmOutput::kBf16}, s));
        });
        const double gbs = m * k * 2.0 / (ms * 1e-3) / 1e9;
        Report(absl::StrFormat("%s_n1_%lldx%lld", mode == 0 ? "gemv" : mode == 1 ? "gemv_pdl" : "cublas", (long long)k,
                               (long long)m), gbs, "GB/s", gbs / hbm,
               "measured HBM copy");
      }
      gemm.set_use_gemv(true);
    }
  }

  // ---- GEMM, prefill-shaped: a chunk of 4096 tokens through Llama-3-8B's four linear layers (cuBLASLt) ----------
  if (Wanted("gemm")) {
    const int64_t n = 4096;
    for (auto [k, m] : {std::pair<int64_t, int64_t>{4096, 6144}, {4096, 4096}, {4096, 28672}, {14336, 4096}}) {
      DeviceBuffer w = Alloc(m * k * 2), x = Alloc(n * k * 2), o = Alloc(n * m * 2);
      BENCH_CHECK(FillUniformBf16(w.as<bf16>(), m * k, 4, 0.05f, s));
      BENCH_CHECK(FillUniformBf16(x.as<bf16>(), n * k, 5, 1.0f, s));
      const double ms = TimeMs(s, [&](int) {
        BENCH_CHECK(gemm.Linear({x.as<bf16>(), n, k, w.as<bf16>(), m, nullptr, o.data(), GemmOutput::kBf16}, s));
      }, 10, 5);
      const double tflops = 2.0 * n * k * m / (ms * 1e-3) / 1e12;
      Report(absl::StrFormat("gemm_prefill_%lldx%lldx%lld", (long long)n, (long long)k, (long long)m), tflops,
             "TFLOP/s", tflops / gemm_tflops, "measured GEMM (8192 cube)");
    }
  }

  // ---- Decode attention: Llama-3-8B layer (32 q heads, 8 KV heads, d 128) --------------------------------------
  // Pipelined kernel (default) and the first one (legacy), dense 32k and 128k as pages of 32 and as one run per
  // head, batch 1 and 8, and sparse decode (2048 tokens per head in 64 random pages). Achieved bytes/s / HBM copy.
  const int hq = 32, hkv = 8, d = 128;
  const float scale = 1.0f / std::sqrt(float(d));
  const int ctas = std::max(1, DecodeCtasPerSm(d, hq / hkv));  // the tensor-core kernel's
  KvPlanOptions popts;
  popts.target_items = 2 * info->multiprocessors;
  std::printf("decode CTAs per SM: tensor-core %d (stages 2: %d, 4: %d), pipelined %d (stages 2: %d)\n", ctas,
              DecodeCtasPerSm(d, hq / hkv, 2), DecodeCtasPerSm(d, hq / hkv, 4),
              DecodeCtasPerSm(d, hq / hkv, 0, DecodeKernel::kPipelined), DecodeCtasPerSm(d, hq / hkv, 2, DecodeKernel::kPipelined));
  auto decode_case = [&](const std::string& name, std::vector<UploadedPlan>& plans, int seqs, int64_t tokens_per_head,
                         DecodeKernel kernel, bool floor_ratio, int stages = 0, bool zero_copy_plans = false,
                         bool graph = false) {
    DeviceBuffer q = Alloc(size_t(seqs) * hq * d * 2), out = Alloc(size_t(seqs) * hq * d * 2);
    BENCH_CHECK(FillUniformBf16(q.as<bf16>(), int64_t(seqs) * hq * d, 6, 1.0f, s));
    size_t ws_bytes = 16;
    for (auto& p : plans) ws_bytes = std::max(ws_bytes, DecodeWorkspaceBytes(p.plan.num_items(), hq / hkv, d));
    DeviceBuffer ws = Alloc(ws_bytes);
    BENCH_CHECK(InitDecodeWorkspace(ws.data(), ws.bytes(), s));
    DecodeAttentionArgs a;
    a.q = q.as<bf16>();
    a.out = out.as<bf16>();
    a.num_seqs = seqs;
    a.num_q_heads = hq;
    a.num_kv_heads = hkv;
    a.head_dim = d;
    a.scale = scale;
    a.kernel = kernel;
    a.pipeline_stages = stages;
    auto call = [&](int i) {
      UploadedPlan& p = plans[i % plans.size()];
      BENCH_CHECK(DecodeAttention(a, p.plan, p.address(zero_copy_plans), ws.data(), ws.bytes(), s));
    };
    const double ms = graph ? TimeGraphMs(s, call, 50, 7) : TimeMs(s, call, 50, 7);
    const double bytes = double(seqs) * tokens_per_head * hkv * d * 2 * 2;
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    const double floor_us = bytes / (hbm * 1e9) * 1e6;
    if (floor_ratio) {
      Report(name + "_us", ms * 1e3, "us", ms * 1e3 / floor_us, "time / (bytes/HBM), goal <= 1.5");
    } else {
      Report(name, gbs, "GB/s", gbs / hbm, "measured HBM copy, goal >= 0.85");
    }
    return ms;
  };
  auto plan_for = [&](std::vector<const ContextKv*> ptrs, int per_sm, int min_tokens) {
    KvPlanOptions o;
    o.target_items = per_sm * info->multiprocessors;
    o.min_tokens_per_item = min_tokens;
    auto plan = KvPlan::Create(ptrs, hkv, d, o);
    BENCH_CHECK(plan.status());
    return Upload(std::move(*plan));
  };
  if (Wanted("decode")) {
    for (int64_t tokens : {int64_t{32768}, int64_t{131072}}) {
      const std::string ctx = tokens == 32768 ? "32k" : "128k";
      // One run per head: the dense device cache's layout (DenseKvCache, the GPU recall path's dense layers).
      {
        // 32k: four copies rotated (4 x 64 MiB > L2), so every call reads from HBM as in a model's layers.
        const int copies = tokens == 32768 ? 4 : 1;
        std::vector<ContextKv> cs(copies);
        DeviceBuffer kv = Alloc(size_t(copies) * hkv * tokens * d * 2 * 2);
        BENCH_CHECK(FillUniformBf16(kv.as<bf16>(), int64_t(copies) * hkv * tokens * d * 2, 8, 1.0f, s));
        for (int i = 0; i < copies; ++i) {
          cs[i].dtype = DType::kBF16;
          cs[i].heads.resize(hkv);
          for (int h = 0; h < hkv; ++h) {
            const bf16* k = kv.as<bf16>() + (int64_t(i) * hkv + h) * tokens * d * 2;
            cs[i].heads[h].push_back(KvRun{k, k + tokens * d, int32_t(tokens), 0});
          }
        }
        struct Variant {
          DecodeKernel kernel;
          int stages;
          const char* tag;
          bool pdl = false;  // programmatic dependent launch, as the engine launches it
        };
        for (const Variant& v : {Variant{DecodeKernel::kMma, 0, ""}, Variant{DecodeKernel::kMma, 0, "_pdl", true},
                                 Variant{DecodeKernel::kMma, 2, "_st2"},
                                 Variant{DecodeKernel::kMma, 4, "_st4"}, Variant{DecodeKernel::kMmaRowLoads, 0, "_rowloads"},
                                 Variant{DecodeKernel::kPipelined, 0, "_pipelined"},
                                 Variant{DecodeKernel::kPipelined, 2, "_pipelined_st2"},
                                 Variant{DecodeKernel::kLegacy, 0, "_legacy"}}) {
          const int occ = std::max(1, DecodeCtasPerSm(d, hq / hkv, v.stages, v.kernel));
          std::vector<UploadedPlan> plans;
          for (const ContextKv& c : cs) plans.push_back(plan_for({&c}, occ, 64));
          ScopedPdl pdl(v.pdl);
          decode_case(absl::StrFormat("decode_dense%s_onerun_b1%s", ctx, v.tag), plans, 1, tokens, v.kernel, false, v.stages);
        }
      }
      // Pages of 32 (1024 / 4096 runs per head), batch 1 and (32k only) batch 8.
      {
        const int64_t pages_per_head = tokens / 32;
        const int max_seqs = tokens == 32768 ? 8 : 1;
        PagePool pool = MakePool(max_seqs * hkv * pages_per_head, s, 7);
        for (int seqs : tokens == 32768 ? std::vector<int>{1, 8} : std::vector<int>{1}) {
          std::vector<ContextKv> cx(seqs);
          std::vector<const ContextKv*> ptrs;
          for (int b = 0; b < seqs; ++b) {
            cx[b].dtype = DType::kBF16;
            cx[b].heads.resize(hkv);
            for (int h = 0; h < hkv; ++h) {
              for (int64_t p = 0; p < pages_per_head; ++p) {
                const int64_t page = (int64_t(b) * hkv + h) * pages_per_head + p;
                cx[b].heads[h].push_back(KvRun{pool.K(page), pool.V(page), 32, p * 32});
              }
            }
            ptrs.push_back(&cx[b]);
          }
          std::vector<UploadedPlan> plans;
          plans.push_back(plan_for(ptrs, ctas, 64));
          decode_case(absl::StrFormat("decode_dense%s_pages_b%d", ctx, seqs), plans, seqs, tokens, DecodeKernel::kMma, false);
          if (seqs == 1) {
            std::vector<UploadedPlan> legacy;
            legacy.push_back(plan_for(ptrs, 2, 64));
            decode_case(absl::StrFormat("decode_dense%s_pages_b1_legacy", ctx), legacy, 1, tokens, DecodeKernel::kLegacy, false);
          }
        }
      }
    }
  }
  if (Wanted("decode") || Wanted("sparse")) {
    // Sparse: 2048 tokens per head = 64 random pages of a 512 MiB pool, 8 different selections rotated.
    {
      PagePool pool = MakePool(8 * hkv * 1024, s, 7);
      // Launched back to back, or (graph) the 50 calls captured in a CUDA graph (TimeGraphMs); with programmatic
      // dependent launch (pdl) as in the engine's decode step, where the attention follows the QKV GEMV; the plan
      // read zero-copy from mapped pinned memory or from device memory; items of at least min_tokens tokens.
      struct SparseVariant {
        const char* tag;
        int min_tokens;
        DecodeKernel kernel;
        bool pdl, zero_copy, graph;
        int stages;
      };
      const SparseVariant variants[] = {
          {"", 64, DecodeKernel::kMma, false, false, false, 0},
          {"_min128", 128, DecodeKernel::kMma, false, false, false, 0},
          {"_min256", 256, DecodeKernel::kMma, false, false, false, 0},
          {"_pipelined", 64, DecodeKernel::kPipelined, false, false, false, 0},
          {"_legacy", 64, DecodeKernel::kLegacy, false, false, false, 0},
          {"_pdl", 64, DecodeKernel::kMma, true, false, false, 0},
          {"_pdl_zerocopy", 64, DecodeKernel::kMma, true, true, false, 0},
          {"_graph", 64, DecodeKernel::kMma, false, false, true, 0},
          {"_pdl_graph", 64, DecodeKernel::kMma, true, false, true, 0},
          {"_pdl_graph_min128", 128, DecodeKernel::kMma, true, false, true, 0},
          {"_pdl_graph_min256", 256, DecodeKernel::kMma, true, false, true, 0},
          {"_pdl_graph_st2", 64, DecodeKernel::kMma, true, false, true, 2},
          {"_pdl_graph_min128_st2", 128, DecodeKernel::kMma, true, false, true, 2},
      };
      for (const SparseVariant& v : variants) {
        ScopedPdl pdl(v.pdl);
        std::mt19937 rng(9);
        std::vector<UploadedPlan> plans;
        std::vector<ContextKv> ctxs(8);
        for (int sel = 0; sel < 8; ++sel) {
          ctxs[sel].dtype = DType::kBF16;
          ctxs[sel].heads.resize(hkv);
          for (int h = 0; h < hkv; ++h) {
            for (int p = 0; p < 64; ++p) {
              const int64_t page = rng() % pool.pages;
              ctxs[sel].heads[h].push_back(KvRun{pool.K(page), pool.V(page), 32, -1});
            }
          }
          const int occupancy = std::max(1, DecodeCtasPerSm(d, hq / hkv, v.stages, v.kernel));
          plans.push_back(plan_for({&ctxs[sel]}, occupancy, v.min_tokens));
        }
        decode_case(std::string("decode_sparse2048_b1") + v.tag, plans, 1, 2048, v.kernel, true, v.stages, v.zero_copy,
                    v.graph);
      }
      // The floor of one launch: an empty kernel, back to back, on this stream, and in a graph.
      const double empty_ms = TimeMs(s, [&](int) { BENCH_CHECK(LaunchEmpty(s)); }, 50, 7);
      Report("launch_empty_kernel_us", empty_ms * 1e3, "us", 1.0, "launch-latency floor (back-to-back)");
      const double empty_graph_ms = TimeGraphMs(s, [&](int) { BENCH_CHECK(LaunchEmpty(s)); }, 50, 7);
      Report("launch_empty_kernel_graph_us", empty_graph_ms * 1e3, "us", 1.0, "launch-latency floor (in a graph)");
    }
  }

  // ---- Prefill attention ---------------------------------------------------------------------------------------
  // The context: pages of 32 tokens, or (one_run) one run per KV head, as the engine's dense device cache holds it.
  auto prefill_case = [&](const std::string& name, int32_t chunk, int64_t ctx_tokens, PrefillKernel kernel,
                          bool one_run = false) {
    DeviceBuffer q = Alloc(size_t(chunk) * hq * d * 2), k = Alloc(size_t(chunk) * hkv * d * 2),
                 v = Alloc(size_t(chunk) * hkv * d * 2), out = Alloc(size_t(chunk) * hq * d * 2);
    BENCH_CHECK(FillUniformBf16(q.as<bf16>(), int64_t(chunk) * hq * d, 10, 1.0f, s));
    BENCH_CHECK(FillUniformBf16(k.as<bf16>(), int64_t(chunk) * hkv * d, 11, 1.0f, s));
    BENCH_CHECK(FillUniformBf16(v.as<bf16>(), int64_t(chunk) * hkv * d, 12, 1.0f, s));
    PagePool pool = MakePool(std::max<int64_t>(1, hkv * ctx_tokens / 32), s, 13);
    ContextKv c;
    c.dtype = DType::kBF16;
    c.heads.resize(hkv);
    for (int h = 0; h < hkv; ++h) {
      if (one_run && ctx_tokens > 0) {  // the head's pages' bytes as [ctx][d] K rows, then V rows
        const bf16* base = pool.K(h * (ctx_tokens / 32));
        c.heads[h].push_back(KvRun{base, base + ctx_tokens * d, int32_t(ctx_tokens), 0});
        continue;
      }
      for (int64_t p = 0; p < ctx_tokens / 32; ++p) {
        const int64_t page = h * (ctx_tokens / 32) + p;
        c.heads[h].push_back(KvRun{pool.K(page), pool.V(page), 32, p * 32});
      }
    }
    std::vector<const ContextKv*> ptrs = {&c};
    auto plan = KvPlan::Create(ptrs, hkv, d, popts);
    BENCH_CHECK(plan.status());
    UploadedPlan up = Upload(std::move(*plan));
    PrefillAttentionArgs a;
    a.q = q.as<bf16>();
    a.k = k.as<bf16>();
    a.v = v.as<bf16>();
    a.out = out.as<bf16>();
    a.n = chunk;
    a.num_q_heads = hq;
    a.num_kv_heads = hkv;
    a.head_dim = d;
    a.pos0 = ctx_tokens;
    a.scale = scale;
    a.kernel = kernel;
    const double ms = TimeMs(s, [&](int) { BENCH_CHECK(PrefillAttention(a, up.plan, up.dev.data(), s)); }, 5, 5);
    // Visible (query, key) pairs: every context key plus the causal half of the chunk.
    const double pairs = double(chunk) * ctx_tokens + double(chunk) * (chunk + 1) / 2;
    const double tflops = 4.0 * pairs * d * hq / (ms * 1e-3) / 1e12;
    Report(name, tflops, "TFLOP/s", tflops / gemm_tflops,
           kernel == PrefillKernel::kMmaSync ? "measured GEMM (the mma.sync kernel)"
           : kernel == PrefillKernel::kWgmma ? "measured GEMM (the wgmma kernel)"
                                              : "measured GEMM (the default kernel: warp-specialized on sm_90)");
  };
  if (Wanted("prefill")) {
    const bool sm90 = CurrentDeviceIsSm90().value_or(false);
    // The default (warp-specialized on sm_90), then the wgmma kernel it replaced and the mma.sync one. The last
    // case is the engine's last chunk of a 32k prefill (chunks of 4096 over its dense cache).
    for (const PrefillKernel kernel : {PrefillKernel::kAuto, PrefillKernel::kWgmma, PrefillKernel::kMmaSync}) {
      if (!sm90 && kernel == PrefillKernel::kWgmma) continue;
      const std::string tag = kernel == PrefillKernel::kMmaSync ? "_mmasync"
                              : kernel == PrefillKernel::kWgmma ? "_wgmma"
                                                                : "";
      prefill_case("prefill_causal_4096" + tag, 4096, 0, kernel);
      prefill_case("prefill_1024_over_16k_pages" + tag, 1024, 16384, kernel);
      prefill_case("prefill_4096_over_28k" + tag, 4096, 28672, kernel, /*one_run=*/true);
    }
  }

  // ---- K-means: 8 KV heads x 32k keys; C = 1024 (ours: 32 tokens per cluster) and 400 (ClusterKV's at 32k) ----
  if (Wanted("kmeans")) {
    for (const int32_t C : {1024, 400}) {
      const int32_t heads = 8, npts = 32768;
      const std::string tag = absl::StrFormat("8x32k_C%d", C);
      DeviceBuffer keys = Alloc(size_t(npts) * heads * d * 2), cent = Alloc(size_t(heads) * C * d * 4),
                   labels = Alloc(size_t(heads) * npts * 4), sizes = Alloc(size_t(heads) * C * 4);
      BENCH_CHECK(FillUniformBf16(keys.as<bf16>(), int64_t(npts) * heads * d, 14, 1.0f, s));
      BENCH_CHECK(FillUniformF32(cent.as<float>(), int64_t(heads) * C * d, 15, 1.0f, s));
      DeviceBuffer ws = Alloc(KMeansWorkspaceBytes(heads, npts, C, d));
      KMeansPoints pts{keys.as<bf16>(), d, int64_t(heads) * d, heads, npts, d};
      const double assign_ms = TimeMs(s, [&](int) {
        BENCH_CHECK(KMeansAssign(pts, cent.as<float>(), C, labels.as<int32_t>(), ws.data(), ws.bytes(), s));
      }, 5, 5);
      const double tflops = 2.0 * npts * C * d * heads / (assign_ms * 1e-3) / 1e12;
      Report("kmeans_assign_" + tag, tflops, "TFLOP/s", tflops / gemm_tflops,
             "measured GEMM (the default kernel: wgmma on sm_90)");
      const double mma_ms = TimeMs(s, [&](int) {
        BENCH_CHECK(KMeansAssign(pts, cent.as<float>(), C, labels.as<int32_t>(), ws.data(), ws.bytes(), s,
                                 KMeansAssignKernel::kMmaSync));
      }, 5, 5);
      const double mma_tflops = 2.0 * npts * C * d * heads / (mma_ms * 1e-3) / 1e12;
      Report("kmeans_assign_" + tag + "_mmasync", mma_tflops, "TFLOP/s", mma_tflops / gemm_tflops,
             "measured GEMM (the mma.sync kernel)");
      const double update_ms = TimeMs(s, [&](int) {
        BENCH_CHECK(KMeansUpdate(pts, labels.as<int32_t>(), C, cent.as<float>(), sizes.as<int32_t>(), ws.data(), ws.bytes(), s));
      }, 5, 5);
      const double ubytes = double(npts) * heads * d * 2;
      Report("kmeans_update_" + tag + "_us", update_ms * 1e3, "us", (ubytes / (hbm * 1e9) * 1e6) / (update_ms * 1e3),
             "floor keys/HBM");
      if (C == 1024) {
        Report("kmeans_iteration_" + tag + "_ms", assign_ms + update_ms, "ms", 0.95 / (assign_ms + update_ms),
               "eager torch 0.95 ms (performance.md 3)");
      }
      // One layer's clustering as the recall path runs it: 20 rounds and the final relabel, no early stop.
      const double run_ms = TimeMs(s, [&](int) {
        BENCH_CHECK(KMeansRun(pts, C, 20, cent.as<float>(), labels.as<int32_t>(), sizes.as<int32_t>(), ws.data(),
                              ws.bytes(), s));
      }, 1, 3);
      Report("kmeans_run20_" + tag + "_ms", run_ms, "ms", 21 * assign_ms / run_ms, "21 assignments' share");
    }
  }

  // ---- Selection: decode, 8 KV heads x group 4 ----------------------------------------------------------------
  if (Wanted("selection")) {
    for (int32_t C : {1024, 4096}) {
      const int32_t heads = 8, group = 4;
      DeviceBuffer q = Alloc(size_t(heads) * group * d * 2), cent = Alloc(size_t(heads) * C * d * 4),
                   pooled = Alloc(size_t(heads) * C * 4), sizes = Alloc(size_t(heads) * C * 4),
                   chosen = Alloc(size_t(heads) * C * 4), count = Alloc(heads * 4), taken = Alloc(heads * 8);
      BENCH_CHECK(FillUniformBf16(q.as<bf16>(), int64_t(heads) * group * d, 16, 1.0f, s));
      BENCH_CHECK(FillUniformF32(cent.as<float>(), int64_t(heads) * C * d, 17, 1.0f, s));
      // Cluster sizes as k-means leaves them: mostly around 32 tokens, some empty (the greedy's second phase then
      // walks the sorted order until the budget is exactly spent).
      std::mt19937 zr(15);
      std::vector<int32_t> hs(size_t(heads) * C);
      for (int32_t& z : hs) z = zr() % 8 == 0 ? 0 : static_cast<int32_t>(1 + zr() % 63);
      BENCH_CHECK(CopyToDevice(sizes.data(), hs.data(), hs.size() * 4));
      DeviceBuffer ws = Alloc(ScoreWorkspaceBytes(heads, group, C));
      const double ms = TimeMs(s, [&](int) {
        ScoreArgs a;
        a.q = q.as<bf16>();
        a.heads = heads;
        a.group = group;
        a.head_dim = d;
        a.centroids = cent.as<float>();
        a.blocks = C;
        a.pooled = pooled.as<float>();
        BENCH_CHECK(ScoreBlocks(a, ws.data(), ws.bytes(), s));
        SelectArgs sa{pooled.as<float>(), sizes.as<int32_t>(), heads, C, 2048, chosen.as<int32_t>(), count.as<int32_t>(),
                      taken.as<int64_t>()};
        BENCH_CHECK(SelectBlocks(sa, nullptr, 0, s));
      }, 50, 7);
      const double floor_us = double(heads) * C * d * 4 / (hbm * 1e9) * 1e6;
      Report(absl::StrFormat("select_score_C%d_us", C), ms * 1e3, "us", floor_us / (ms * 1e3), "floor centroids/HBM");
      // The same selection in two launches (what the recall path runs for a decode step).
      const double fused_ms = TimeMs(s, [&](int) {
        FusedSelectArgs f;
        f.q = q.as<bf16>();
        f.heads = heads;
        f.group = group;
        f.head_dim = d;
        f.centroids = cent.as<float>();
        f.sizes = sizes.as<int32_t>();
        f.blocks = C;
        f.budget = 2048;
        f.chosen = chosen.as<int32_t>();
        f.count = count.as<int32_t>();
        f.taken = taken.as<int64_t>();
        BENCH_CHECK(FusedSelect(f, ws.data(), ws.bytes(), s));
      }, 50, 7);
      Report(absl::StrFormat("select_fused_C%d_us", C), fused_ms * 1e3, "us", floor_us / (fused_ms * 1e3),
             "floor centroids/HBM (ScoreKernel + PoolSelectKernel)");
    }
  }

  // ---- Host selection (the query copied back) vs the GPU's, decode, 8 KV heads x group 4 -----------------------
  if (Wanted("selection")) {
    for (int32_t C : {1024, 4096}) {
      const int32_t heads = 8, group = 4;
      std::mt19937 rng(31);
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      std::vector<float> cent(size_t(heads) * C * d);
      for (float& x : cent) x = u(rng);
      std::vector<int32_t> sizes(size_t(heads) * C);
      for (int32_t& x : sizes) x = 1 + int32_t(rng() % 63);
      DeviceBuffer dq = Alloc(size_t(heads) * group * d * 2);
      BENCH_CHECK(FillUniformBf16(dq.as<bf16>(), int64_t(heads) * group * d, 32, 1.0f, s));
      auto pq = PinnedHostBuffer::Create(size_t(heads) * group * d * 2);
      BENCH_CHECK(pq.status());
      std::vector<double> t;
      std::vector<float> q(size_t(heads) * group * d), score(C), pooled(C);
      std::vector<int32_t> order(C);
      int64_t sink = 0;
      for (int rep = 0; rep < 30; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        BENCH_CHECK(CudaStatus(cudaMemcpyAsync(pq->data(), dq.data(), q.size() * 2, cudaMemcpyDeviceToHost, s), "q"));
        BENCH_CHECK(CudaStatus(cudaStreamSynchronize(s), "sync"));
        for (size_t i = 0; i < q.size(); ++i) q[i] = __bfloat162float(pq->as<bf16>()[i]);
        for (int32_t h = 0; h < heads; ++h) {
          std::fill(pooled.begin(), pooled.end(), 0.0f);
          for (int32_t j = 0; j < group; ++j) {
            const float* qv = &q[(size_t(h) * group + j) * d];
            float mx = -INFINITY;
            for (int32_t c = 0; c < C; ++c) {
              const float* cv = &cent[(size_t(h) * C + c) * d];
              float acc = 0.0f;
              for (int e = 0; e < d; ++e) acc += qv[e] * cv[e];
              score[c] = acc * scale;
              mx = std::max(mx, score[c]);
            }
            float sum = 0.0f;
            for (int32_t c = 0; c < C; ++c) sum += (score[c] = std::exp(score[c] - mx));
            for (int32_t c = 0; c < C; ++c) pooled[c] += score[c] / sum / group;
          }
          std::iota(order.begin(), order.end(), 0);
          std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return pooled[a] > pooled[b] || (pooled[a] == pooled[b] && a < b); });
          int64_t left = 2048;
          for (int32_t c : order) {
            const int32_t n = sizes[size_t(h) * C + c];
            if (n <= left) left -= n, sink += c;
          }
        }
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin(), t.end());
      Report(absl::StrFormat("select_host_C%d_us", C), t[t.size() / 2] * 1e6, "us", 0.0,
             absl::StrFormat("q D2H + 1-thread scoring + greedy (compare select_score_C%d_us)", C));
      if (sink == 42) std::printf(" ");
    }
  }

  // ---- Recall: pinned host memory -> device ---------------------------------------------------------------------
  // A 1 GiB pinned pool (mapped, for the zero-copy gather), destinations in HBM. Cluster runs: random runs of 1 or
  // 2 pages of 16 KiB (a 32-token cluster spans ~1.5 pages), sources anywhere in the pool, destinations packed;
  // per token: K and V rows of 256 B each, the ClusterKV offload pattern.
  if (Wanted("recall")) {
    const size_t pool_bytes = size_t{1} << 30, page = 16384, big = size_t{256} << 20;
    auto pool = PinnedHostBuffer::Create(pool_bytes, /*mapped=*/true);
    BENCH_CHECK(pool.status());
    std::memset(pool->data(), 0x3c, pool_bytes);
    DeviceBuffer dst = Alloc(pool_bytes);
    const double h2d_ms = TimeMs(s, [&](int i) {
      BENCH_CHECK(CudaStatus(cudaMemcpyAsync(dst.as<uint8_t>() + (i % 4) * big, pool->as<uint8_t>() + (i % 4) * big, big,
                                             cudaMemcpyHostToDevice, s), "h2d"));
    }, 4, 5);
    const double h2d = big / (h2d_ms * 1e-3) / 1e9;
    Report("ceiling_pinned_h2d_256MiB", h2d, "GB/s", h2d / 63.0, "PCIe Gen5 x16 63 GB/s");
    auto run_set = [&](int n, size_t unit, int max_units, uint32_t seed, std::vector<void*>* d, std::vector<const void*>* sv,
                       std::vector<size_t>* b) {
      std::mt19937 rng(seed);
      size_t off = 0;
      for (int i = 0; i < n; ++i) {
        const size_t bytes = unit * (1 + rng() % max_units);
        const size_t src = (rng() % ((pool_bytes - 2 * page) / unit)) * unit;
        sv->push_back(pool->as<uint8_t>() + src);
        d->push_back(dst.as<uint8_t>() + off);
        b->push_back(bytes);
        off += bytes;
      }
      return off;
    };
    auto bench_set = [&](const std::string& name, std::vector<void*>& d, std::vector<const void*>& sv, std::vector<size_t>& b,
                         size_t total, bool per_copy) {
      cudaMemcpyAttributes attr = {};
      attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
      size_t idx = 0;
      const double ms = TimeMs(s, [&](int) {
        BENCH_CHECK(CudaStatus(cudaMemcpyBatchAsync(d.data(), sv.data(), b.data(), d.size(), &attr, &idx, 1, s), "batch"));
      }, 3, 5);
      const double gbs = total / (ms * 1e-3) / 1e9;
      Report(name + "_batch", gbs, "GB/s", gbs / h2d, "measured pinned H2D, goal >= 0.9");
      if (per_copy) {
        const double ms2 = TimeMs(s, [&](int) {
          for (size_t i = 0; i < d.size(); ++i) {
            BENCH_CHECK(CudaStatus(cudaMemcpyAsync(d[i], sv[i], b[i], cudaMemcpyHostToDevice, s), "copy"));
          }
        }, 2, 5);
        const double g2 = total / (ms2 * 1e-3) / 1e9;
        Report(name + "_per_copy", g2, "GB/s", g2 / h2d, "measured pinned H2D");
      }
      // Zero-copy SM gather of the same pieces: the engine's recall kernel (GatherRuns), descriptors in device memory.
      std::vector<CopyRun> runs(sv.size());
      for (size_t i = 0; i < sv.size(); ++i) runs[i] = CopyRun{sv[i], d[i], b[i]};
      DeviceBuffer dr = Alloc(runs.size() * sizeof(CopyRun));
      BENCH_CHECK(CopyToDevice(dr.data(), runs.data(), runs.size() * sizeof(CopyRun)));
      const int32_t nr = static_cast<int32_t>(runs.size());
      // (CTAs, threads per CTA): the engine's default first.
      const std::vector<std::pair<int, int>> shapes = {{32, 512}, {132, 512}, {8, 512}, {4, 512}, {2, 512},
                                                       {8, 256}, {4, 256}, {16, 128}, {8, 128}};
      for (auto [ctas_g, threads_g] : shapes) {
        if (!per_copy && threads_g != 512) continue;
        const double ms3 =
            TimeMs(s, [&](int) { BENCH_CHECK(GatherRuns(dr.as<CopyRun>(), nr, ctas_g, threads_g, s)); }, 3, 5);
        const double g3 = total / (ms3 * 1e-3) / 1e9;
        Report(absl::StrFormat("%s_sm_gather_%dx%d", name, ctas_g, threads_g), g3, "GB/s", g3 / h2d,
               "measured pinned H2D");
      }
      if (!per_copy) return;
      // The recall runs beside the decode step's weight stream: a gather on a high-priority stream while the GEMV
      // streams gate/up weights (4096 x 28672, the largest decode matrix) on the compute stream. Reported: the
      // GEMV's rate beside the gather / alone, and the gather's rate beside the GEMV / pinned H2D.
      const int64_t gk = 4096, gm = 28672;
      const int copies = 4;  // 940 MB of weights: beyond L2
      DeviceBuffer w = Alloc(copies * gm * gk * 2), x = Alloc(gk * 2), o = Alloc(gm * 2);
      BENCH_CHECK(FillUniformBf16(w.as<bf16>(), copies * gm * gk, 4, 0.05f, s));
      BENCH_CHECK(FillUniformBf16(x.as<bf16>(), gk, 5, 1.0f, s));
      int least = 0, greatest = 0;
      BENCH_CHECK(CudaStatus(cudaDeviceGetStreamPriorityRange(&least, &greatest), "priority range"));
      auto side_or = Stream::Create(false, greatest);
      BENCH_CHECK(side_or.status());
      Stream side = std::move(*side_or);
      auto gemv_loop = [&](int iters) {
        for (int i = 0; i < iters; ++i) {
          BENCH_CHECK(gemm.Linear({x.as<bf16>(), 1, gk, w.as<bf16>() + (i % copies) * gm * gk, gm, nullptr, o.data(),
                                   GemmOutput::kBf16}, s));
        }
      };
      const int iters = 16;  // ~1.3 ms of weights: within one gather of the set (75 MB, >= 1.4 ms at 54 GB/s)
      const double alone_ms = TimeMs(s, [&](int) { gemv_loop(iters); }, 1, 5) / iters;
      auto t0 = Event::Create(true), t1 = Event::Create(true), t2 = Event::Create(true);
      BENCH_CHECK(t0.status());
      BENCH_CHECK(t1.status());
      BENCH_CHECK(t2.status());
      // The GEMV's time beside `side_work` (enqueued on the side stream when the GEMVs start) and the side work's.
      auto beside = [&](const std::function<void()>& side_work, double* gemv_out, double* side_out) {
        std::vector<double> gemv_ms, side_ms;
        for (int r = 0; r < 5; ++r) {
          BENCH_CHECK(t0->Record(s));
          BENCH_CHECK(CudaStatus(cudaStreamWaitEvent(side.get(), t0->get(), 0), "wait"));
          side_work();
          BENCH_CHECK(t2->Record(side.get()));
          gemv_loop(iters);
          BENCH_CHECK(t1->Record(s));
          BENCH_CHECK(t1->Synchronize());
          BENCH_CHECK(t2->Synchronize());
          gemv_ms.push_back(*Event::ElapsedMs(*t0, *t1) / iters);
          side_ms.push_back(*Event::ElapsedMs(*t0, *t2));
        }
        std::sort(gemv_ms.begin(), gemv_ms.end());
        std::sort(side_ms.begin(), side_ms.end());
        *gemv_out = gemv_ms[2];
        *side_out = side_ms[2];
      };
      const std::string alone_note = absl::StrFormat("the GEMV alone (%.1f us)", alone_ms * 1e3);
      for (auto [ctas_g, threads_g] : shapes) {
        double gv = 0, ga = 0;
        beside([&] { BENCH_CHECK(GatherRuns(dr.as<CopyRun>(), nr, ctas_g, threads_g, side.get())); }, &gv, &ga);
        Report(absl::StrFormat("gemv_4096x28672_beside_gather_%dx%d", ctas_g, threads_g),
               gm * gk * 2.0 / (gv * 1e-3) / 1e9, "GB/s", alone_ms / gv, alone_note);
        Report(absl::StrFormat("%s_sm_gather_%dx%d_beside_gemv", name, ctas_g, threads_g), total / (ga * 1e-3) / 1e9,
               "GB/s", total / (ga * 1e-3) / 1e9 / h2d, "measured pinned H2D");
      }
      // The same runs by bulk copies (the Tensor Memory Accelerator, no SM loads), alone and beside the GEMV.
      for (int ctas_b : {1, 2, 4, 8}) {
        const double msb = TimeMs(s, [&](int) { BENCH_CHECK(GatherRunsBulk(dr.as<CopyRun>(), nr, ctas_b, s)); }, 3, 5);
        const double gb = total / (msb * 1e-3) / 1e9;
        Report(absl::StrFormat("%s_bulk_%d", name, ctas_b), gb, "GB/s", gb / h2d, "measured pinned H2D");
        double gv = 0, ga = 0;
        beside([&] { BENCH_CHECK(GatherRunsBulk(dr.as<CopyRun>(), nr, ctas_b, side.get())); }, &gv, &ga);
        Report(absl::StrFormat("gemv_4096x28672_beside_bulk_%d", ctas_b), gm * gk * 2.0 / (gv * 1e-3) / 1e9, "GB/s",
               alone_ms / gv, alone_note);
        Report(absl::StrFormat("%s_bulk_%d_beside_gemv", name, ctas_b), total / (ga * 1e-3) / 1e9, "GB/s",
               total / (ga * 1e-3) / 1e9 / h2d, "measured pinned H2D");
      }
      // What the cost is made of: the same GEMV beside the copy engine moving the same bytes in one pinned
      // host-to-device copy (PCIe traffic without SM loads), and beside the 8 x 256 gather reading the same runs from
      // device memory (SM loads without PCIe).
      {
        double gv = 0, ga = 0;
        beside([&] {
          BENCH_CHECK(CudaStatus(cudaMemcpyAsync(dst.as<uint8_t>(), pool->as<uint8_t>(), total, cudaMemcpyHostToDevice,
                                                 side.get()), "h2d beside"));
        }, &gv, &ga);
        Report("gemv_4096x28672_beside_copy_engine_h2d", gm * gk * 2.0 / (gv * 1e-3) / 1e9, "GB/s", alone_ms / gv,
               alone_note);
        Report(absl::StrFormat("%s_copy_engine_h2d_beside_gemv", name), total / (ga * 1e-3) / 1e9, "GB/s",
               total / (ga * 1e-3) / 1e9 / h2d, "measured pinned H2D (one contiguous copy of the same bytes)");
        DeviceBuffer dev_src = Alloc(pool_bytes);
        std::vector<CopyRun> local(runs);
        for (CopyRun& r : local) {
          r.src = dev_src.as<uint8_t>() + (static_cast<const uint8_t*>(r.src) - pool->as<uint8_t>());
        }
        DeviceBuffer dl = Alloc(local.size() * sizeof(CopyRun));
        BENCH_CHECK(CopyToDevice(dl.data(), local.data(), local.size() * sizeof(CopyRun)));
        beside([&] { BENCH_CHECK(GatherRuns(dl.as<CopyRun>(), nr, 8, 256, side.get())); }, &gv, &ga);
        Report("gemv_4096x28672_beside_device_gather_8x256", gm * gk * 2.0 / (gv * 1e-3) / 1e9, "GB/s",
               alone_ms / gv, alone_note);
      }
      // The copy engine's host cost: one cudaMemcpyBatchAsync of the set, host time per copy (the device idle).
      {
        cudaMemcpyAttributes attr = {};
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        size_t idx = 0;
        std::vector<double> us;
        for (int r = 0; r < 5; ++r) {
          BENCH_CHECK(CudaStatus(cudaStreamSynchronize(s), "sync"));
          const auto h0 = std::chrono::steady_clock::now();
          BENCH_CHECK(CudaStatus(cudaMemcpyBatchAsync(d.data(), sv.data(), b.data(), d.size(), &attr, &idx, 1, s),
                                 "batch"));
          us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - h0).count() /
                       d.size());
        }
        BENCH_CHECK(CudaStatus(cudaStreamSynchronize(s), "sync"));
        std::sort(us.begin(), us.end());
        Report(absl::StrFormat("%s_batch_host_us_per_copy", name), us[2], "us", 0,
               "host time of one cudaMemcpyBatchAsync call / its copies");
      }
    };
    {
      std::vector<void*> d;
      std::vector<const void*> sv;
      std::vector<size_t> b;
      const size_t total = run_set(3072, page, 2, 41, &d, &sv, &b);
      bench_set("recall_cluster_runs_16_32KiB", d, sv, b, total, true);
    }
    {
      std::vector<void*> d;
      std::vector<const void*> sv;
      std::vector<size_t> b;
      const size_t total = run_set(131072, 256, 1, 43, &d, &sv, &b);
      bench_set("recall_per_token_256B", d, sv, b, total, false);
      // One cudaMemcpyAsync per 256-byte piece (a smaller batch: it is slow).
      std::vector<void*> d2(d.begin(), d.begin() + 8192);
      std::vector<const void*> s2(sv.begin(), sv.begin() + 8192);
      const double ms = TimeMs(s, [&](int) {
        for (size_t i = 0; i < d2.size(); ++i) {
          BENCH_CHECK(CudaStatus(cudaMemcpyAsync(d2[i], s2[i], 256, cudaMemcpyHostToDevice, s), "copy"));
        }
      }, 1, 3);
      const double g = 8192.0 * 256 / (ms * 1e-3) / 1e9;
      Report("recall_per_token_256B_per_copy", g, "GB/s", g / h2d, "measured pinned H2D");
    }
  }

  // ---- Element-wise -----------------------------------------------------------------------------------------------
  if (Wanted("elementwise")) {
    const int64_t rowsn = 8192, hidden = 4096, inter = 14336;
    DeviceBuffer x = Alloc(rowsn * hidden * 2), w = Alloc(hidden * 2), o = Alloc(rowsn * hidden * 2);
    BENCH_CHECK(FillUniformBf16(x.as<bf16>(), rowsn * hidden, 18, 1.0f, s));
    BENCH_CHECK(FillUniformBf16(w.as<bf16>(), hidden, 19, 1.0f, s));
    double ms = TimeMs(s, [&](int) { BENCH_CHECK(RmsNorm(x.as<bf16>(), w.as<bf16>(), rowsn, hidden, 1e-5f, o.as<bf16>(), s)); });
    double gbs = 2.0 * rowsn * hidden * 2 / (ms * 1e-3) / 1e9;
    Report("rmsnorm_8192x4096", gbs, "GB/s", gbs / hbm, "measured HBM copy");
    ms = TimeMs(s, [&](int) { BENCH_CHECK(AddInPlace(o.as<bf16>(), x.as<bf16>(), rowsn * hidden, s)); });
    gbs = 3.0 * rowsn * hidden * 2 / (ms * 1e-3) / 1e9;
    Report("residual_add_32M", gbs, "GB/s", gbs / hbm, "measured HBM copy");
    const int64_t r2 = 2048;
    DeviceBuffer gu = Alloc(r2 * 2 * inter * 2), go2 = Alloc(r2 * inter * 2);
    BENCH_CHECK(FillUniformBf16(gu.as<bf16>(), r2 * 2 * inter, 20, 2.0f, s));
    ms = TimeMs(s, [&](int) { BENCH_CHECK(SwiGlu(gu.as<bf16>(), r2, inter, go2.as<bf16>(), s)); });
    gbs = 3.0 * r2 * inter * 2 / (ms * 1e-3) / 1e9;
    Report("swiglu_2048x14336", gbs, "GB/s", gbs / hbm, "measured HBM copy");
  }

  // ---- Sampling over a 128k vocabulary -------------------------------------------------------------------------
  if (Wanted("sampling")) {
    const int32_t vocab = 128256;
    DeviceBuffer logits = Alloc(size_t(vocab) * 4), u = Alloc(4), tok = Alloc(4), ws = Alloc(SampleTopPWorkspaceBytes(1, vocab));
    BENCH_CHECK(FillUniformF32(logits.as<float>(), vocab, 21, 8.0f, s));
    const float half = 0.5f;
    BENCH_CHECK(CopyToDevice(u.data(), &half, 4));
    double ms = TimeMs(s, [&](int) { BENCH_CHECK(SampleArgMax(logits.as<float>(), 1, vocab, vocab, tok.as<int32_t>(), s)); }, 50);
    Report("sample_argmax_128k_us", ms * 1e3, "us", (vocab * 4.0 / (hbm * 1e9) * 1e6) / (ms * 1e3), "floor logits/HBM");
    ms = TimeMs(s, [&](int) {
      BENCH_CHECK(SampleTopP(logits.as<float>(), 1, vocab, vocab, 0.8f, 0.9f, u.as<float>(), tok.as<int32_t>(), ws.data(),
                             ws.bytes(), s));
    }, 20);
    Report("sample_top_p_128k_us", ms * 1e3, "us", (vocab * 4.0 / (hbm * 1e9) * 1e6) / (ms * 1e3), "floor logits/HBM");
  }

  std::printf("\n%-36s %12s %-8s %7s  %s\n", "benchmark", "value", "unit", "ratio", "ceiling");
  for (const Row& r : rows) {
    std::printf("%-36s %12.2f %-8s %7.2f  %s\n", r.name.c_str(), r.value, r.unit.c_str(), r.ratio, r.vs.c_str());
  }
}

}  // namespace
}  // namespace cuda
}  // namespace livekv

int main() {
  livekv::cuda::Run();
  return 0;
}
