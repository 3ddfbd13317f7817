// Decode and prefill attention against the CPU reference (engine/cpu/cpu_attention.cc) on contexts of many runs
// of odd lengths, GQA groups 1..12, head_dim 32/64/128/256, batches of sequences, split and unsplit plans, sliding
// windows and empty contexts.
#include "cuda/ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/launch.h"
#include "cuda/testing/test_util.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_attention.h"

namespace livekv {
namespace cuda {
namespace {

using testing::bf16;
using testing::DeviceArray;
using testing::ExpectClose;
using testing::kBf16Eps;
using testing::RandomFloats;
using testing::RoundBf16;
using testing::ToBf16;
using testing::ToFloat;

// Runs of one sequence: host bf16 copies for the CPU reference, device copies for the kernels.
struct Context {
  std::vector<std::vector<std::vector<bf16>>> k, v;  // [head][run] -> rows
  std::vector<std::vector<int64_t>> first_position;  // [head][run]
  ContextKv host, device;
  DeviceArray<bf16> storage;
  float vmax = 0.0f;
};

// lengths[h] lists the run lengths of head h. Positions: runs of a head are consecutive from 0 when positional.
std::unique_ptr<Context> MakeContext(const std::vector<std::vector<int>>& lengths, int d, bool positional,
                                     std::mt19937* rng) {
  auto c = std::make_unique<Context>();
  const int hkv = static_cast<int>(lengths.size());
  c->k.resize(hkv);
  c->v.resize(hkv);
  c->first_position.resize(hkv);
  size_t total = 0;
  for (int h = 0; h < hkv; ++h) {
    int64_t pos = 0;
    for (int n : lengths[h]) {
      c->k[h].push_back(ToBf16(RandomFloats(static_cast<size_t>(n) * d, rng)));
      std::vector<float> vf = RoundBf16(RandomFloats(static_cast<size_t>(n) * d, rng));
      for (float x : vf) c->vmax = std::max(c->vmax, std::fabs(x));
      c->v[h].push_back(ToBf16(vf));
      c->first_position[h].push_back(positional ? pos : -1);
      pos += n;
      total += 2 * static_cast<size_t>(n) * d + 8;
    }
  }
  c->storage = DeviceArray<bf16>(std::max<size_t>(total, 8));
  std::vector<bf16> flat(c->storage.size());
  size_t off = 0;
  c->host.dtype = c->device.dtype = DType::kBF16;
  c->host.heads.resize(hkv);
  c->device.heads.resize(hkv);
  for (int h = 0; h < hkv; ++h) {
    for (size_t r = 0; r < lengths[h].size(); ++r) {
      const int n = lengths[h][r];
      const size_t rows = static_cast<size_t>(n) * d;
      std::copy(c->k[h][r].begin(), c->k[h][r].end(), flat.begin() + off);
      std::copy(c->v[h][r].begin(), c->v[h][r].end(), flat.begin() + off + rows);
      c->host.heads[h].push_back(KvRun{c->k[h][r].data(), c->v[h][r].data(), n, c->first_position[h][r]});
      c->device.heads[h].push_back(KvRun{c->storage.get() + off, c->storage.get() + off + rows, n, c->first_position[h][r]});
      off += 2 * rows + 8;  // keep the next run 16-byte aligned, with a gap
    }
  }
  c->storage.Upload(flat);
  return c;
}

std::vector<std::vector<int>> Lengths(int hkv, const std::vector<int>& pattern, int runs, int rotate) {
  std::vector<std::vector<int>> out(hkv);
  for (int h = 0; h < hkv; ++h) {
    for (int r = 0; r < runs; ++r) out[h].push_back(pattern[(r + h * rotate) % pattern.size()]);
  }
  return out;
}

TensorView View(std::vector<float>& v, Shape s) { return TensorView{v.data(), DType::kF32, s}; }

class AttentionTest : public testing::GpuTest {
 protected:
  ThreadPool pool_{4};

  // Uploads a plan's bytes into a fresh device buffer.
  DeviceArray<uint8_t> Upload(const KvPlan& plan) { return DeviceArray<uint8_t>::FromHost(plan.bytes()); }
};

struct DecodeCase {
  int hq, hkv, d, seqs;
  std::vector<int> pattern;
  int runs;
  int64_t window;
  KvPlanOptions options;
  bool empty_head;  // head 0 of sequence 0 has no tokens at all (no context, no self row)
};

TEST_F(AttentionTest, DecodeMatchesCpuReference) {
  std::mt19937 rng(21);
  KvPlanOptions fine;
  fine.target_items = 1000;
  fine.min_tokens_per_item = 1;
  fine.max_runs_per_item = 3;
  KvPlanOptions coarse;
  coarse.target_items = 1;
  KvPlanOptions defaults;
  const std::vector<DecodeCase> cases = {
      {1, 1, 64, 1, {1}, 1, 0, defaults, false},
      {3, 1, 128, 1, {1, 7, 33, 97}, 9, 0, defaults, false},
      {8, 2, 64, 2, {7, 33}, 5, 0, fine, false},
      {32, 8, 128, 1, {32}, 40, 0, defaults, false},           // 1280 tokens in pages of 32
      {32, 8, 128, 1, {2048}, 1, 0, defaults, false},          // one big run, split across CTAs
      {12, 1, 256, 3, {1, 7, 33, 97}, 6, 0, defaults, false},  // group 12: two CTAs per item
      {4, 4, 256, 2, {97, 1}, 3, 0, coarse, true},
      {8, 1, 128, 2, {33, 7, 1}, 8, 50, fine, false},          // sliding window
      {14, 2, 64, 1, {5}, 200, 0, coarse, false},              // 200 runs > kMaxRunsPerItem: cut by runs
      {4, 2, 32, 2, {7, 33, 1}, 7, 0, fine, false},            // head_dim 32 (the tiny parity models)
      {3, 1, 32, 1, {31, 64}, 5, 9, defaults, false},          // head_dim 32 with a sliding window
      {32, 8, 128, 1, {32}, 64, 0, fine, false},               // sparse-decode shape: 64 pages per head, split
      {20, 2, 128, 1, {33, 5}, 30, 0, fine, false},            // group 10: two CTAs per item, split
  };
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const DecodeCase& c = cases[ci];
    const std::string what = "case " + std::to_string(ci);
    std::vector<std::unique_ptr<Context>> ctx;
    std::vector<const ContextKv*> dev_ctx;
    std::vector<int64_t> qpos;
    // Per sequence: context runs, then the token's own K/V row as a final one-row run.
    std::vector<float> q_all, out_ref;
    std::vector<float> self_k, self_v;
    for (int s = 0; s < c.seqs; ++s) {
      auto lengths = Lengths(c.hkv, c.pattern, c.runs, s + 1);
      if (c.empty_head && s == 0) lengths[0].clear();
      ctx.push_back(MakeContext(lengths, c.d, c.window > 0, &rng));
    }
    // The self rows live in their own device arrays, appended as runs.
    std::vector<DeviceArray<bf16>> self_dev;
    for (int s = 0; s < c.seqs; ++s) {
      Context& cx = *ctx[s];
      std::vector<float> q = RoundBf16(RandomFloats(static_cast<size_t>(c.hq) * c.d, &rng, -4, 4));
      std::vector<float> kself = RoundBf16(RandomFloats(static_cast<size_t>(c.hkv) * c.d, &rng));
      std::vector<float> vself = RoundBf16(RandomFloats(static_cast<size_t>(c.hkv) * c.d, &rng));
      int64_t pos = 0;
      for (const KvRun& r : cx.host.heads[c.hkv - 1]) pos += r.n;
      pos += 3;  // a gap: positions need not be dense
      qpos.push_back(pos);
      std::vector<float> out(static_cast<size_t>(c.hq) * c.d, 0.0f);
      const bool skip_self = c.empty_head && s == 0;
      if (!skip_self) {
        AttentionArgs a;
        a.q = View(q, {1, c.hq, c.d});
        a.k = View(kself, {1, c.hkv, c.d});
        a.v = View(vself, {1, c.hkv, c.d});
        a.out = View(out, {1, c.hq, c.d});
        a.pos0 = pos;
        a.context = &cx.host;
        a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
        a.sliding_window = c.window;
        // The CPU reference checks context positions against the window only when it is set.
        ASSERT_TRUE(CpuAttention(a, &pool_).ok());
      } else {
        // Head 0 sees nothing (zeros); the other heads still attend to their context and self row.
        AttentionArgs a;
        std::vector<float> sub_q(q.begin() + (c.hq / c.hkv) * c.d, q.end());
        std::vector<float> sub_k(kself.begin() + c.d, kself.end()), sub_v(vself.begin() + c.d, vself.end());
        std::vector<float> sub_out(sub_q.size());
        ContextKv sub;
        sub.dtype = DType::kBF16;
        sub.heads.assign(cx.host.heads.begin() + 1, cx.host.heads.end());
        a.q = View(sub_q, {1, c.hq - c.hq / c.hkv, c.d});
        a.k = View(sub_k, {1, c.hkv - 1, c.d});
        a.v = View(sub_v, {1, c.hkv - 1, c.d});
        a.out = View(sub_out, {1, c.hq - c.hq / c.hkv, c.d});
        a.pos0 = pos;
        a.context = &sub;
        a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
        ASSERT_TRUE(CpuAttention(a, &pool_).ok());
        std::copy(sub_out.begin(), sub_out.end(), out.begin() + (c.hq / c.hkv) * c.d);
      }
      q_all.insert(q_all.end(), q.begin(), q.end());
      out_ref.insert(out_ref.end(), out.begin(), out.end());
      self_dev.push_back(DeviceArray<bf16>::FromHost(ToBf16(kself)));
      self_dev.push_back(DeviceArray<bf16>::FromHost(ToBf16(vself)));
      for (int h = 0; h < c.hkv; ++h) {
        if (skip_self && h == 0) continue;
        cx.device.heads[h].push_back(KvRun{self_dev[2 * s].get() + h * c.d, self_dev[2 * s + 1].get() + h * c.d, 1, pos});
      }
      dev_ctx.push_back(&cx.device);
    }
    auto plan = KvPlan::Create(dev_ctx, c.hkv, c.d, c.options, c.window > 0 ? absl::MakeConstSpan(qpos) : absl::Span<const int64_t>());
    ASSERT_TRUE(plan.ok()) << what << ": " << plan.status();
    auto plan_dev = Upload(*plan);
    const int group = c.hq / c.hkv;
    DeviceArray<uint8_t> ws(std::max<size_t>(DecodeWorkspaceBytes(plan->num_items(), group, c.d), 16));
    ASSERT_TRUE(InitDecodeWorkspace(ws.get(), ws.size(), stream()).ok());
    auto dq = DeviceArray<bf16>::FromHost(ToBf16(q_all));
    // The tensor-core kernel twice on the same workspace (its arrival counters must reset), the legacy one, the
    // pipelined one, then stage variants (they exist for head_dim 128), the row-loads variant of the tensor-core
    // kernel (head_dim 128), the tensor-core kernel with programmatic dependent launch, and with that reading the
    // plan zero-copy from mapped pinned host memory (CudaBackend's decode plans).
    const DecodeKernel kernels[] = {DecodeKernel::kMma,       DecodeKernel::kMma, DecodeKernel::kLegacy,
                                    DecodeKernel::kPipelined, DecodeKernel::kMma, DecodeKernel::kMma,
                                    DecodeKernel::kPipelined, DecodeKernel::kMmaRowLoads, DecodeKernel::kMma,
                                    DecodeKernel::kMma};
    const int stages[] = {0, 0, 0, 0, 2, 4, 2, 0, 0, 0};
    auto host_plan = PinnedHostBuffer::Create(plan->bytes().size(), /*mapped=*/true);
    ASSERT_TRUE(host_plan.ok()) << host_plan.status();
    std::memcpy(host_plan->data(), plan->bytes().data(), plan->bytes().size());
    auto host_plan_dev = host_plan->device_pointer();
    ASSERT_TRUE(host_plan_dev.ok()) << host_plan_dev.status();
    for (int run = 0; run < 10; ++run) {
      if (kernels[run] == DecodeKernel::kMmaRowLoads && c.d != 128) continue;
      ScopedPdl pdl(run >= 8);
      const void* plan_ptr = run == 9 ? *host_plan_dev : static_cast<const void*>(plan_dev.get());
      DeviceArray<bf16> dout(q_all.size()), dq_copy(q_all.size());
      dq_copy.Poison();
      DecodeAttentionArgs a;
      a.q = dq.get();
      a.out = dout.get();
      a.q_copy = run % 2 == 0 ? dq_copy.get() : nullptr;  // every kernel with and without the query snapshot
      a.num_seqs = c.seqs;
      a.num_q_heads = c.hq;
      a.num_kv_heads = c.hkv;
      a.head_dim = c.d;
      a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
      a.sliding_window = c.window;
      a.kernel = kernels[run];
      a.pipeline_stages = stages[run];
      ASSERT_TRUE(DecodeAttention(a, *plan, plan_ptr, ws.get(), ws.size(), stream()).ok()) << what;
      float vmax = 1.0f;
      ExpectClose(ToFloat(dout.ToHost()), out_ref, 2e-3f * vmax, kBf16Eps,
                  what + " run " + std::to_string(run) + " (" + std::to_string(plan->num_items()) + " items)");
      if (a.q_copy != nullptr) {
        const std::vector<bf16> copied = dq_copy.ToHost(), want = ToBf16(q_all);
        ASSERT_EQ(copied.size(), want.size());
        EXPECT_EQ(std::memcmp(copied.data(), want.data(), want.size() * sizeof(bf16)), 0)
            << what << " run " << run << ": the query snapshot differs from q";
      }
    }
  }
}

TEST_F(AttentionTest, DecodeRejectsBadArguments) {
  std::mt19937 rng(22);
  auto cx = MakeContext({{7}, {7}}, 128, false, &rng);
  std::vector<const ContextKv*> ctxs = {&cx->device};
  auto plan = KvPlan::Create(ctxs, 2, 128);
  ASSERT_TRUE(plan.ok());
  DecodeAttentionArgs a;
  a.num_seqs = 1, a.num_q_heads = 4, a.num_kv_heads = 2, a.head_dim = 96;  // 32/64/128/256 only
  EXPECT_EQ(DecodeAttention(a, *plan, nullptr, nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 128, a.num_q_heads = 3;
  EXPECT_EQ(DecodeAttention(a, *plan, nullptr, nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
  // Wrong head count and dtype in the plan.
  EXPECT_EQ(KvPlan::Create(ctxs, 3, 128).status().code(), absl::StatusCode::kInvalidArgument);
  ContextKv f32 = cx->device;
  f32.dtype = DType::kF32;
  std::vector<const ContextKv*> bad = {&f32};
  EXPECT_EQ(KvPlan::Create(bad, 2, 128).status().code(), absl::StatusCode::kInvalidArgument);
  // Misaligned rows.
  ContextKv mis = cx->device;
  mis.heads[0][0].k = static_cast<const char*>(mis.heads[0][0].k) + 2;
  std::vector<const ContextKv*> bad2 = {&mis};
  EXPECT_EQ(KvPlan::Create(bad2, 2, 128).status().code(), absl::StatusCode::kInvalidArgument);
  // A window needs positional runs.
  std::vector<int64_t> pos = {10};
  EXPECT_EQ(KvPlan::Create(ctxs, 2, 128, {}, pos).status().code(), absl::StatusCode::kInvalidArgument);
  // The query snapshot must be aligned and must not overlap q.
  auto plan_dev = Upload(*plan);
  DeviceArray<bf16> q(2 * 4 * 128 + 8), out(4 * 128);
  a.num_q_heads = 4;
  a.q = q.get();
  a.out = out.get();
  a.q_copy = q.get() + 4 * 128 - 8;  // overlaps q's last 8 elements
  EXPECT_EQ(DecodeAttention(a, *plan, plan_dev.get(), nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
  a.q_copy = q.get() + 4 * 128 + 1;  // past q, misaligned
  EXPECT_EQ(DecodeAttention(a, *plan, plan_dev.get(), nullptr, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
}

struct PrefillCase {
  int hq, hkv, d, n;
  std::vector<int> pattern;
  int runs;
  int64_t window;
};

TEST_F(AttentionTest, PrefillMatchesCpuReference) {
  std::mt19937 rng(23);
  const std::vector<PrefillCase> cases = {
      {1, 1, 64, 1, {}, 0, 0},              // no context, one token
      {3, 1, 128, 7, {1, 7, 33}, 4, 0},
      {8, 2, 128, 97, {33, 97}, 3, 0},      // > one tile of rows and keys
      {4, 4, 64, 130, {}, 0, 0},            // pure causal prefill
      {8, 8, 256, 33, {7, 1}, 5, 0},
      {12, 2, 64, 41, {5, 32}, 6, 0},       // group 6: rows of a tile span tokens unevenly
      {8, 1, 128, 70, {32}, 4, 60},         // sliding window across context and chunk
      {2, 1, 256, 65, {64}, 2, 0},
      {4, 2, 32, 37, {5, 32}, 3, 0},        // head_dim 32
      {4, 2, 32, 20, {6}, 2, 6},            // head_dim 32, window 6 (mistral_window6)
  };
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const PrefillCase& c = cases[ci];
    const std::string what = "prefill case " + std::to_string(ci);
    auto cx = MakeContext(Lengths(c.hkv, c.pattern.empty() ? std::vector<int>{1} : c.pattern, c.runs, 1), c.d,
                          c.window > 0, &rng);
    int64_t ctx_tokens = 0;
    for (const KvRun& r : cx->host.heads[0]) ctx_tokens += r.n;
    // All heads of the Lengths pattern have the same total for rotate=1? Not necessarily; pos0 after the longest.
    for (const auto& head : cx->host.heads) {
      int64_t t = 0;
      for (const KvRun& r : head) t += r.n;
      ctx_tokens = std::max(ctx_tokens, t);
    }
    const int64_t pos0 = ctx_tokens + 5;
    std::vector<float> q = RoundBf16(RandomFloats(static_cast<size_t>(c.n) * c.hq * c.d, &rng, -4, 4));
    std::vector<float> k = RoundBf16(RandomFloats(static_cast<size_t>(c.n) * c.hkv * c.d, &rng));
    std::vector<float> v = RoundBf16(RandomFloats(static_cast<size_t>(c.n) * c.hkv * c.d, &rng));
    std::vector<float> ref(q.size());
    AttentionArgs a;
    a.q = View(q, {c.n, c.hq, c.d});
    a.k = View(k, {c.n, c.hkv, c.d});
    a.v = View(v, {c.n, c.hkv, c.d});
    a.out = View(ref, {c.n, c.hq, c.d});
    a.pos0 = pos0;
    a.context = &cx->host;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    a.sliding_window = c.window;
    ASSERT_TRUE(CpuAttention(a, &pool_).ok());

    std::vector<const ContextKv*> ctxs = {&cx->device};
    std::vector<int64_t> qpos = {pos0};
    auto plan = KvPlan::Create(ctxs, c.hkv, c.d, {}, c.window > 0 ? absl::MakeConstSpan(qpos) : absl::Span<const int64_t>());
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto plan_dev = Upload(*plan);
    auto dq = DeviceArray<bf16>::FromHost(ToBf16(q));
    auto dk = DeviceArray<bf16>::FromHost(ToBf16(k));
    auto dv = DeviceArray<bf16>::FromHost(ToBf16(v));
    DeviceArray<bf16> dout(q.size());
    PrefillAttentionArgs p;
    p.q = dq.get();
    p.k = dk.get();
    p.v = dv.get();
    p.out = dout.get();
    p.n = c.n;
    p.num_q_heads = c.hq;
    p.num_kv_heads = c.hkv;
    p.head_dim = c.d;
    p.pos0 = pos0;
    p.scale = a.scale;
    p.sliding_window = c.window;
    // The wgmma kernels where the device has wgmma (sm_90, head_dim 64 / 128); the mma.sync one everywhere.
    std::vector<PrefillKernel> kernels = {PrefillKernel::kMmaSync};
    if (CurrentDeviceIsSm90().value_or(false) && (c.d == 64 || c.d == 128)) {
      kernels.push_back(PrefillKernel::kWgmma);
      kernels.push_back(PrefillKernel::kWarpSpecialized);
    }
    for (const PrefillKernel kernel : kernels) {
      const std::string which = what + (kernel == PrefillKernel::kWgmma             ? " (wgmma)"
                                        : kernel == PrefillKernel::kWarpSpecialized ? " (warp-specialized)"
                                                                                    : " (mma.sync)");
      dout.Poison();
      p.kernel = kernel;
      ASSERT_TRUE(PrefillAttention(p, *plan, plan_dev.get(), stream()).ok()) << which;
      // P is rounded to bf16 for the tensor-core P·V: up to 2^-9 of sum p|v| <= 2^-9 max|v| (=1), plus output rounding.
      ExpectClose(ToFloat(dout.ToHost()), ref, 3e-3f, kBf16Eps, which);
    }
  }
}

// Where the wgmma kernel does not apply, asking for it is refused.
TEST_F(AttentionTest, PrefillWgmmaOutsideItsShapesIsRefused) {
  std::mt19937 rng(29);
  auto cx = MakeContext(Lengths(1, {1}, 0, 1), 32, false, &rng);
  std::vector<const ContextKv*> ctxs = {&cx->device};
  auto plan = KvPlan::Create(ctxs, 1, 32, {}, absl::Span<const int64_t>());
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto plan_dev = Upload(*plan);
  DeviceArray<bf16> q(32), k(32), v(32), out(32);
  PrefillAttentionArgs p;
  p.q = q.get();
  p.k = k.get();
  p.v = v.get();
  p.out = out.get();
  p.n = 1;
  p.num_q_heads = 1;
  p.num_kv_heads = 1;
  p.head_dim = 32;
  p.kernel = PrefillKernel::kWgmma;
  EXPECT_EQ(PrefillAttention(p, *plan, plan_dev.get(), stream()).code(), absl::StatusCode::kFailedPrecondition);
  p.kernel = PrefillKernel::kWarpSpecialized;
  EXPECT_EQ(PrefillAttention(p, *plan, plan_dev.get(), stream()).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
