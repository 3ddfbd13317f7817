// The CUDA engine against the CPU engine (the fp32 reference) on every committed Hugging Face parity model
// (engine/testdata/hf), both running the same weights rounded to bf16, plus the device-side dummy weights.
//
// Tolerance: max |Δlogit| <= 2e-2 * max |logit| at every position. The CPU engine computes in fp32 throughout;
// the CUDA engine rounds every activation to bf16 (8 significant bits: 2^-9 relative per rounding) — the residual
// stream, the norm outputs, q/k/v, attention outputs, the MLP — about 15 roundings per layer on the way to the
// logits, each a relative error of up to 2^-9 = 0.2% of the value rounded. They add up roughly as a random walk
// (sqrt(30) * 0.2% ≈ 1.1%) relative to the activations' scale, which the LM head maps to the logits' scale; 2e-2
// leaves about 2x margin over that estimate and is still far below what a wrong kernel (a wrong head, position,
// mask or scale changes logits by O(max |logit|)) produces. The measured errors are printed per model.
// Greedy tokens: 8 decode steps teacher-forced with the CPU's tokens; the GPU's argmax must equal the CPU's at
// every step whose CPU top-1/top-2 margin exceeds the tolerance (closer steps are reported as too close to call).
#include "engine/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "common/status_macros.h"
#include "cuda/testing/test_util.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/model_config.h"
#include "engine/presets.h"
#include "engine/safetensors/safetensors.h"
#include "engine/transformer.h"
#include "engine/weights.h"

namespace livekv {
namespace {

constexpr double kTolerance = 2e-2;  // max |Δlogit| / max |logit|
constexpr int kDecodeSteps = 8;

struct Error {
  double max_diff = 0, max_ref = 0;
  double relative() const { return max_ref > 0 ? max_diff / max_ref : max_diff; }
};

Error Compare(const float* got, const float* want, int64_t n) {
  Error e;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::isfinite(got[i]) ? std::abs(double(got[i]) - want[i]) : INFINITY;
    e.max_diff = std::max(e.max_diff, d);
    e.max_ref = std::max(e.max_ref, std::abs(double(want[i])));
  }
  return e;
}

void RoundToBf16(Tensor& t) {
  if (t.empty()) return;
  float* p = static_cast<float*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = BF16ToF32(F32ToBF16(p[i]));
}

std::vector<Tensor*> AllTensors(ModelWeights& w) {
  std::vector<Tensor*> out = {&w.embed};
  for (LayerWeights& l : w.layers) {
    for (Tensor* t : {&l.attn_norm, &l.wqkv, &l.bqkv, &l.wo, &l.bo, &l.mlp_norm, &l.w_gate_up, &l.w_down}) out.push_back(t);
  }
  out.push_back(&w.final_norm);
  out.push_back(&w.lm_head);
  return out;
}

class CudaBackendTest : public cuda::testing::GpuTest {
 protected:
  void SetUp() override {
    cuda::testing::GpuTest::SetUp();
    if (IsSkipped()) return;
    auto b = CudaBackend::Create();
    ASSERT_TRUE(b.ok()) << b.status();
    gpu_ = std::move(*b);
  }
  std::unique_ptr<CudaBackend> gpu_;
};

TEST_F(CudaBackendTest, DummyWeightsAreTheHostValuesRoundedToBf16) {
  ModelConfig c = PresetConfig("tiny").value();
  c.num_layers = 2;
  c.attention_bias = true;  // bias tensors too
  CpuBackend cpu(CpuBackendOptions{.num_threads = 2});
  auto host = DummyWeights(c, 7, &cpu);
  ASSERT_TRUE(host.ok()) << host.status();
  auto dev = CudaDummyWeights(c, 7, gpu_.get());
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::vector<Tensor*> h = AllTensors(*host), d = AllTensors(*dev);
  ASSERT_EQ(h.size(), d.size());
  for (size_t i = 0; i < h.size(); ++i) {
    ASSERT_EQ(h[i]->empty(), d[i]->empty()) << "tensor " << i;
    if (h[i]->empty()) continue;
    ASSERT_EQ(h[i]->shape(), d[i]->shape()) << "tensor " << i;
    std::vector<float> got(d[i]->numel());
    ASSERT_TRUE(gpu_->CopyToHost(d[i]->view(), got.data()).ok());
    RoundToBf16(*h[i]);
    const float* want = static_cast<const float*>(h[i]->data());
    int64_t bad = 0;
    for (int64_t j = 0; j < d[i]->numel(); ++j) bad += got[j] != want[j];
    EXPECT_EQ(bad, 0) << "tensor " << i << " differs in " << bad << " of " << d[i]->numel() << " values";
  }
}

TEST_F(CudaBackendTest, AllocateReportsOutOfMemory) {
  auto t = gpu_->Allocate(DType::kBF16, Shape{int64_t{1} << 40, 1024});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted) << t.status();
}

TEST_F(CudaBackendTest, RejectsWrongDtypesAndShapes) {
  auto a = gpu_->Allocate(DType::kF32, Shape{2, 8}).value();
  auto b = gpu_->Allocate(DType::kBF16, Shape{8}).value();
  EXPECT_EQ(gpu_->RmsNorm(a.view(), b.view(), 1e-5f, a.view()).code(), absl::StatusCode::kInvalidArgument);
  auto x = gpu_->Allocate(DType::kBF16, Shape{2, 8}).value();
  auto w = gpu_->Allocate(DType::kBF16, Shape{3, 7}).value();
  auto o = gpu_->Allocate(DType::kBF16, Shape{2, 3}).value();
  EXPECT_EQ(gpu_->Linear(x.view(), w.view(), nullptr, o.view()).code(), absl::StatusCode::kInvalidArgument);
  const int32_t bad_id[] = {9};
  auto table = gpu_->Allocate(DType::kBF16, Shape{4, 8}).value();
  auto row = gpu_->Allocate(DType::kBF16, Shape{1, 8}).value();
  EXPECT_EQ(gpu_->Embed(bad_id, table.view(), row.view()).code(), absl::StatusCode::kInvalidArgument);
}

class HfParityOnGpu : public CudaBackendTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(HfParityOnGpu, LogitsAndGreedyTokensMatchTheCpuEngine) {
  const std::string dir = "engine/testdata/hf/" + GetParam();
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto files = SafetensorsSet::OpenDir(dir);
  ASSERT_TRUE(files.ok()) << files.status();
  auto ref_file = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref_file.ok()) << ref_file.status();
  const TensorInfo* prompt_t = (*ref_file)->Find("prompt_ids");
  ASSERT_NE(prompt_t, nullptr);
  std::vector<int32_t> prompt(prompt_t->num_elements());
  std::memcpy(prompt.data(), prompt_t->data, prompt_t->nbytes);

  CpuBackend cpu(CpuBackendOptions{.num_threads = 2});
  auto cpu_weights = LoadWeights(*config, **files, &cpu);
  ASSERT_TRUE(cpu_weights.ok()) << cpu_weights.status();
  for (Tensor* t : AllTensors(*cpu_weights)) RoundToBf16(*t);
  auto gpu_weights = LoadWeights(*config, **files, gpu_.get());
  ASSERT_TRUE(gpu_weights.ok()) << gpu_weights.status();

  // Chunks of 5: prefill crosses chunk boundaries, so later chunks attend to cached KV.
  auto cpu_model = Transformer::Create(*config, std::move(*cpu_weights), &cpu, TransformerOptions{.max_chunk = 5}).value();
  auto gpu_model =
      Transformer::Create(*config, std::move(*gpu_weights), gpu_.get(), TransformerOptions{.max_chunk = 5}).value();
  auto cpu_kv = DenseKvCache::Create(*config, &cpu, DType::kF32).value();
  auto gpu_kv = DenseKvCache::Create(*config, gpu_.get(), DType::kBF16, /*initial_capacity=*/4).value();
  const int64_t vocab = config->vocab_size;

  std::vector<float> want, got;
  ASSERT_TRUE(cpu_model->Forward(prompt, cpu_kv.get(), /*all_logits=*/true, &want).ok());
  absl::Status s = gpu_model->Forward(prompt, gpu_kv.get(), /*all_logits=*/true, &got);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t p = 0; p < prompt.size(); ++p) {
    const Error e = Compare(&got[p * vocab], &want[p * vocab], vocab);
    worst = std::max(worst, e.relative());
    EXPECT_LE(e.relative(), kTolerance) << "prompt position " << p << ": max |Δ| " << e.max_diff << ", max |logit| "
                                        << e.max_ref;
  }
  std::string skipped;
  double worst_decode = 0;
  for (int step = 0; step < kDecodeSteps; ++step) {
    const float* last = &want[want.size() - vocab];
    const int32_t token = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    const int32_t ids[] = {token};
    ASSERT_TRUE(cpu_model->Forward(ids, cpu_kv.get(), false, &want).ok());
    s = gpu_model->Forward(ids, gpu_kv.get(), false, &got);
    ASSERT_TRUE(s.ok()) << s;
    const Error e = Compare(got.data(), want.data(), vocab);
    worst_decode = std::max(worst_decode, e.relative());
    EXPECT_LE(e.relative(), kTolerance) << "decode step " << step << ": max |Δ| " << e.max_diff;
    // Greedy agreement where the CPU's choice is clear by more than the tolerance.
    std::vector<float> sorted(want);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const double margin = double(sorted[0]) - sorted[1];
    const int32_t cpu_top = static_cast<int32_t>(std::max_element(want.begin(), want.end()) - want.begin());
    const int32_t gpu_top = static_cast<int32_t>(std::max_element(got.begin(), got.end()) - got.begin());
    if (margin > kTolerance * e.max_ref) {
      EXPECT_EQ(gpu_top, cpu_top) << "decode step " << step << " (margin " << margin << ")";
    } else {
      skipped += " " + std::to_string(step);
    }
  }
  std::printf("PARITY %-24s prefill max rel err %.2e, decode %.2e (tolerance %.0e); argmax steps too close to call:%s; "
              "fused GEMVs %lld\n",
              GetParam().c_str(), worst, worst_decode, kTolerance, skipped.empty() ? " none" : skipped.c_str(),
              static_cast<long long>(gpu_->fused_gemv_calls()));
  // The decode steps ran the fused norm/SwiGLU/residual GEMVs (the default) wherever the widths allow it.
  if (config->hidden_size % 8 == 0 && config->intermediate_size % 8 == 0) EXPECT_GT(gpu_->fused_gemv_calls(), 0);
}

// A committed parity model on the GPU, prefilled in chunks of 16.
absl::StatusOr<std::unique_ptr<Transformer>> LoadGpuModel(const std::string& dir, CudaBackend* gpu, ModelConfig* config) {
  LIVEKV_ASSIGN_OR_RETURN(*config, LoadModelConfig(dir));
  LIVEKV_ASSIGN_OR_RETURN(auto files, SafetensorsSet::OpenDir(dir));
  LIVEKV_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(*config, *files, gpu));
  return Transformer::Create(*config, std::move(weights), gpu, TransformerOptions{.max_chunk = 16});
}

// The logits of each of `steps` (one token each) decoded after `prompt`, on a fresh dense KV cache.
absl::StatusOr<std::vector<std::vector<float>>> DecodeLogits(Transformer& model, const ModelConfig& config,
                                                             CudaBackend* gpu, absl::Span<const int32_t> prompt,
                                                             absl::Span<const int32_t> steps) {
  LIVEKV_ASSIGN_OR_RETURN(auto kv, DenseKvCache::Create(config, gpu, DType::kBF16, 4));
  std::vector<float> logits;
  LIVEKV_RETURN_IF_ERROR(model.Forward(prompt, kv.get(), false, &logits));
  std::vector<std::vector<float>> out;
  for (int32_t t : steps) {
    const int32_t ids[] = {t};
    logits.clear();
    LIVEKV_RETURN_IF_ERROR(model.Forward(ids, kv.get(), false, &logits));
    out.push_back(logits);
  }
  return out;
}

// Decode-step fusion and programmatic launch change nothing but the norm's fp32 summation order: 6 decode steps
// with them (the default) against the same steps with both off, on the same backend and weights.
TEST_F(CudaBackendTest, FusedDecodeMatchesUnfused) {
  ModelConfig config;
  auto model = LoadGpuModel("engine/testdata/hf/llama_gqa2_d64_llama3", gpu_.get(), &config);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> prompt = {1, 17, 230, 5, 99, 41, 7, 200, 12};  // vocabulary 256
  const int32_t steps[] = {3, 250, 18, 77, 2, 140};
  std::vector<std::vector<float>> runs[2];
  for (int fused = 1; fused >= 0; --fused) {
    gpu_->set_fuse_decode_ops(fused == 1);
    gpu_->set_programmatic_launch(fused == 1);
    const int64_t before = gpu_->fused_gemv_calls();
    auto logits = DecodeLogits(**model, config, gpu_.get(), prompt, steps);
    ASSERT_TRUE(logits.ok()) << logits.status();
    runs[fused] = std::move(*logits);
    if (fused == 1) {
      EXPECT_GE(gpu_->fused_gemv_calls() - before, 3 * config.num_layers * 6) << "fusion did not happen";
    } else {
      EXPECT_EQ(gpu_->fused_gemv_calls(), before);
    }
  }
  double worst = 0;
  for (size_t i = 0; i < runs[0].size(); ++i) {
    ASSERT_EQ(runs[0][i].size(), runs[1][i].size());
    const Error e = Compare(runs[1][i].data(), runs[0][i].data(), static_cast<int64_t>(runs[0][i].size()));
    worst = std::max(worst, e.relative());
  }
  std::printf("fused vs unfused decode: max rel diff %.2e\n", worst);
  EXPECT_LE(worst, kTolerance / 4);
}

// The attention plan read zero-copy, copied in the stream or copied aside: the same kernels read the same bytes,
// so 8 decode steps give bit-identical logits. The aside copy is ordered only by its event: a missing wait shows as
// a plan read before it landed (garbage runs, different logits or a fault).
TEST_F(CudaBackendTest, DecodePlanPlacementsGiveIdenticalLogits) {
  ModelConfig config;
  auto model = LoadGpuModel("engine/testdata/hf/llama_gqa2_d64_llama3", gpu_.get(), &config);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> prompt = {1, 17, 230, 5, 99, 41, 7, 200, 12, 64, 3};
  const int32_t steps[] = {3, 250, 18, 77, 2, 140, 9, 33};
  const DecodePlans placements[] = {DecodePlans::kZeroCopy, DecodePlans::kInStream, DecodePlans::kAside};
  std::vector<std::vector<float>> runs[3];
  for (int p = 0; p < 3; ++p) {
    gpu_->set_decode_plans(placements[p]);
    auto logits = DecodeLogits(**model, config, gpu_.get(), prompt, steps);
    ASSERT_TRUE(logits.ok()) << logits.status();
    runs[p] = std::move(*logits);
  }
  gpu_->set_decode_plans(CudaBackendOptions().decode_plans);
  for (int p = 1; p < 3; ++p) {
    ASSERT_EQ(runs[p].size(), runs[0].size());
    for (size_t i = 0; i < runs[0].size(); ++i) EXPECT_EQ(runs[p][i], runs[0][i]) << "placement " << p << ", step " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, HfParityOnGpu,
                         ::testing::Values("llama_gqa1_d32", "llama_gqa2_d64_llama3", "llama_gqa3_odd_tied",
                                           "llama_bias_d32", "qwen2_gqa2_tied", "qwen2_gqa4_d64_untied",
                                           "llama_gqa2_bf16", "mistral_window6"));

}  // namespace
}  // namespace livekv
