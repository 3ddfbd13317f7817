// Prefill attention on the CPU: one layer of the committed byte-level model's shape (models/tiny: 8 query and 2 KV
// heads of head_dim 32) over a whole document, as the transformer runs it: chunks of 256 rows, each over the
// earlier tokens as pages of 32 (the evaluation's dense prefill) and causal among themselves. The blocked
// CpuAttention is printed as GFLOP/s next to OpenBLAS sgemm on the same threads (the tiny model's MLP shape at
// the same chunk), and against the row-at-a-time kernel it replaced (cpu_attention_reference.h).
//
//   bazel run //bench:cpu_attention_bench -- [--lengths 4096,16384] [--threads 1] [--dtype F32]
//
// FLOPs: 4 · head_dim per visible (query head, key) pair, QKᵀ and PV; the softmax is not counted.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/ceilings.h"
#include "common/thread_pool.h"
#include "engine/cpu/cpu_attention.h"
#include "engine/cpu/cpu_attention_reference.h"

ABSL_FLAG(std::string, lengths, "4096,16384", "Document lengths in tokens.");
ABSL_FLAG(int32_t, threads, 1, "Threads of the attention pool and of OpenBLAS.");
ABSL_FLAG(std::string, dtype, "F32", "Context K/V dtype: F32, BF16 or F16.");
ABSL_FLAG(int64_t, reference_max_tokens, 16384, "Time the old kernel only up to this length (it is slow).");
ABSL_FLAG(int32_t, reps, 3, "Runs of the blocked kernel per length (median reported).");

namespace livekv {
namespace {

constexpr int64_t kHq = 8, kHkv = 2, kD = 32, kChunk = 256, kPage = 32;

// The first `tokens` of a document's cached K/V ([kHkv][len][kD] each) as pages of kPage.
ContextKv Pages(DType dtype, int64_t len, int64_t tokens, const std::vector<char>& ck, const std::vector<char>& cv) {
  const size_t es = DTypeSize(dtype);
  ContextKv ctx;
  ctx.dtype = dtype;
  ctx.heads.resize(kHkv);
  for (int64_t g = 0; g < kHkv; ++g) {
    for (int64_t p = 0; p < tokens; p += kPage) {
      KvRun run;
      run.k = ck.data() + (g * len + p) * kD * es;
      run.v = cv.data() + (g * len + p) * kD * es;
      run.n = static_cast<int32_t>(std::min(kPage, tokens - p));
      run.first_position = p;
      ctx.heads[g].push_back(run);
    }
  }
  return ctx;
}

// One layer's prefill of `len` tokens through `attention`, chunk by chunk. Returns seconds.
template <typename Fn>
double Prefill(int64_t len, DType dtype, const std::vector<char>& ck, const std::vector<char>& cv,
               std::vector<float>& q, std::vector<float>& k, std::vector<float>& v, std::vector<float>& out,
               Fn attention) {
  double seconds = 0;
  for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
    const int64_t n = std::min(kChunk, len - c0);
    const ContextKv ctx = Pages(dtype, len, c0, ck, cv);
    AttentionArgs a;
    a.q = TensorView{q.data(), DType::kF32, {n, kHq, kD}};
    a.k = TensorView{k.data(), DType::kF32, {n, kHkv, kD}};
    a.v = TensorView{v.data(), DType::kF32, {n, kHkv, kD}};
    a.out = TensorView{out.data(), DType::kF32, {n, kHq, kD}};
    a.pos0 = c0;
    a.context = &ctx;
    a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
    const auto t0 = std::chrono::steady_clock::now();
    if (!attention(a).ok()) std::abort();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return seconds;
}

// One decode step of one layer (a row at position len - 1 over the len - 1 cached tokens). Median seconds.
template <typename Fn>
double Decode(int64_t len, DType dtype, const std::vector<char>& ck, const std::vector<char>& cv,
              std::vector<float>& q, std::vector<float>& k, std::vector<float>& v, std::vector<float>& out,
              int reps, Fn attention) {
  const ContextKv ctx = Pages(dtype, len, len - 1, ck, cv);
  AttentionArgs a;
  a.q = TensorView{q.data(), DType::kF32, {1, kHq, kD}};
  a.k = TensorView{k.data(), DType::kF32, {1, kHkv, kD}};
  a.v = TensorView{v.data(), DType::kF32, {1, kHkv, kD}};
  a.out = TensorView{out.data(), DType::kF32, {1, kHq, kD}};
  a.pos0 = len - 1;
  a.context = &ctx;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  return bench::MedianSeconds([&] { if (!attention(a).ok()) std::abort(); }, reps, 2);
}

// One line of the table; old = 0 when the row-at-a-time kernel was not timed.
void Print(const char* stage, int64_t len, double blocked, double gflops, double gemm, double old) {
  const auto time = [](double s) {
    char buf[32];
    if (s >= 0.1) {
      std::snprintf(buf, sizeof(buf), "%.3f s", s);
    } else if (s >= 1e-3) {
      std::snprintf(buf, sizeof(buf), "%.2f ms", s * 1e3);
    } else {
      std::snprintf(buf, sizeof(buf), "%.1f us", s * 1e6);
    }
    return std::string(buf);
  };
  char speedup[32] = "-";
  if (old > 0) std::snprintf(speedup, sizeof(speedup), "%.1fx", old / blocked);
  std::printf("%-8s %8lld %12s %10.1f %8.2f %16s %8s\n", stage, static_cast<long long>(len), time(blocked).c_str(),
              gflops, gflops / gemm, old > 0 ? time(old).c_str() : "-", speedup);
}

int Run() {
  const int threads = absl::GetFlag(FLAGS_threads);
  DType dtype;
  if (!ParseDTypeName(absl::GetFlag(FLAGS_dtype), &dtype) ||
      (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16)) {
    std::fprintf(stderr, "--dtype must be F32, BF16 or F16, saw %s\n", absl::GetFlag(FLAGS_dtype).c_str());
    return 2;
  }
  std::vector<int64_t> lengths;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_lengths), ',', absl::SkipEmpty())) {
    int64_t len;
    if (!absl::SimpleAtoi(s, &len) || len < 1) {
      std::fprintf(stderr, "bad --lengths entry \"%s\"\n", std::string(s).c_str());
      return 2;
    }
    lengths.push_back(len);
  }
  ThreadPool pool(threads);
  openblas_set_num_threads(threads);
  const double gemm = bench::SgemmGflops(kChunk, 2 * 768, 256);
  std::printf("attention: %lld query / %lld KV heads of %lld, chunks of %lld over pages of %lld, context %s, "
              "%d threads\n",
              static_cast<long long>(kHq), static_cast<long long>(kHkv), static_cast<long long>(kD),
              static_cast<long long>(kChunk), static_cast<long long>(kPage), absl::GetFlag(FLAGS_dtype).c_str(),
              threads);
  std::printf("ceiling: OpenBLAS sgemm %lldx1536x256, %d threads: %.1f GFLOP/s\n", static_cast<long long>(kChunk),
              threads, gemm);
  std::printf("%-8s %8s %12s %10s %8s %16s %8s\n", "stage", "tokens", "blocked", "GFLOP/s", "/sgemm",
              "row-at-a-time", "speedup");

  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto random = [&](size_t count) {
    std::vector<float> x(count);
    for (float& e : x) e = dist(rng);
    return x;
  };
  std::vector<float> q = random(kChunk * kHq * kD), k = random(kChunk * kHkv * kD), v = random(kChunk * kHkv * kD);
  std::vector<float> out(kChunk * kHq * kD);
  for (int64_t len : lengths) {
    const size_t es = DTypeSize(dtype);
    std::vector<char> ck(kHkv * len * kD * es), cv(kHkv * len * kD * es);
    const std::vector<float> kf = random(kHkv * len * kD), vf = random(kHkv * len * kD);
    ConvertFromF32(kf.data(), kf.size(), dtype, ck.data());
    ConvertFromF32(vf.data(), vf.size(), dtype, cv.data());
    // Visible (query, key) pairs per query head: every earlier token and itself.
    const double flops = 4.0 * kD * kHq * (static_cast<double>(len) * (len + 1) / 2);

    std::vector<double> runs;
    for (int r = 0; r < absl::GetFlag(FLAGS_reps); ++r) {
      runs.push_back(Prefill(len, dtype, ck, cv, q, k, v, out,
                             [&](const AttentionArgs& a) { return CpuAttention(a, &pool); }));
    }
    std::sort(runs.begin(), runs.end());
    const double blocked = runs[runs.size() / 2];
    const double gflops = flops / blocked / 1e9;
    const bool reference = len <= absl::GetFlag(FLAGS_reference_max_tokens);
    const double old = reference ? Prefill(len, dtype, ck, cv, q, k, v, out,
                                           [&](const AttentionArgs& a) { return ReferenceCpuAttention(a, &pool); })
                                 : 0;
    Print("prefill", len, blocked, gflops, gemm, old);

    // Decode: the same document, one more row.
    const double decode_flops = 4.0 * kD * kHq * len;
    const double d_blocked = Decode(len, dtype, ck, cv, q, k, v, out, 21,
                                    [&](const AttentionArgs& a) { return CpuAttention(a, &pool); });
    const double d_old = reference ? Decode(len, dtype, ck, cv, q, k, v, out, 5,
                                            [&](const AttentionArgs& a) { return ReferenceCpuAttention(a, &pool); })
                                   : 0;
    Print("decode", len, d_blocked, decode_flops / d_blocked / 1e9, gemm, d_old);
  }
  return 0;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Run();
}
