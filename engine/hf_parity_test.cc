// Logits parity with Hugging Face transformers on tiny random models of every supported architecture
// (references made by tools/hf_parity/make_references.py, committed under engine/testdata/hf/).
#include <algorithm>
#include <cmath>
#include <string>

#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/model_config.h"
#include "engine/safetensors/safetensors.h"
#include "engine/transformer.h"
#include "engine/weights.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

constexpr double kTolerance = 1e-4;  // max |Δlogit| / max |logit|, at every position

double RelativeError(const float* got, const float* want, int64_t n) {
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::abs(double(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(double(want[i])));
  }
  return max_diff / max_ref;
}

int32_t Argmax(const float* x, int64_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

class HfParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParityTest, LogitsAndGreedyTokensMatchTransformers) {
  const std::string dir = "engine/testdata/hf/" + GetParam();
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto files = SafetensorsSet::OpenDir(dir);
  ASSERT_TRUE(files.ok()) << files.status();
  // The reference file lives beside the weights; open it on its own.
  auto ref_file = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref_file.ok()) << ref_file.status();

  CpuBackend backend(CpuBackendOptions{.num_threads = 2});
  auto weights = LoadWeights(*config, **files, &backend);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto model = Transformer::Create(*config, std::move(*weights), &backend, TransformerOptions{.max_chunk = 5});
  ASSERT_TRUE(model.ok()) << model.status();
  auto kv = DenseKvCache::Create(*config, &backend, DType::kF32).value();

  auto read = [&](const char* name) {
    const TensorInfo* t = (*ref_file)->Find(name);
    EXPECT_NE(t, nullptr) << name;
    return t;
  };
  const TensorInfo* prompt_t = read("prompt_ids");
  const TensorInfo* prefill_t = read("prefill_logits");
  const TensorInfo* ids_t = read("decode_ids");
  const TensorInfo* decode_t = read("decode_logits");
  std::vector<int32_t> prompt(prompt_t->num_elements()), ids(ids_t->num_elements());
  std::memcpy(prompt.data(), prompt_t->data, prompt_t->nbytes);
  std::memcpy(ids.data(), ids_t->data, ids_t->nbytes);
  std::vector<float> prefill(prefill_t->num_elements()), decode(decode_t->num_elements());
  std::memcpy(prefill.data(), prefill_t->data, prefill_t->nbytes);
  std::memcpy(decode.data(), decode_t->data, decode_t->nbytes);
  const int64_t vocab = config->vocab_size;

  // Prefill (in chunks of 5, so chunk boundaries are crossed): every position.
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward(prompt, kv.get(), /*all_logits=*/true, &logits).ok());
  ASSERT_EQ(logits.size(), prefill.size());
  for (size_t p = 0; p < prompt.size(); ++p) {
    EXPECT_LE(RelativeError(&logits[p * vocab], &prefill[p * vocab], vocab), kTolerance) << "prompt position " << p;
  }
  // Greedy decode: the same tokens, and the same logits at every step.
  EXPECT_EQ(Argmax(&logits[logits.size() - vocab], vocab), ids[0]);
  for (size_t step = 0; step < ids.size(); ++step) {
    const int32_t token[] = {ids[step]};
    ASSERT_TRUE((*model)->Forward(token, kv.get(), /*all_logits=*/false, &logits).ok());
    EXPECT_LE(RelativeError(logits.data(), &decode[step * vocab], vocab), kTolerance) << "decode step " << step;
    if (step + 1 < ids.size()) {
      EXPECT_EQ(Argmax(logits.data(), vocab), ids[step + 1]) << "decode step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, HfParityTest,
                         ::testing::Values("llama_gqa1_d32", "llama_gqa2_d64_llama3", "llama_gqa3_odd_tied",
                                           "llama_bias_d32", "qwen2_gqa2_tied", "qwen2_gqa4_d64_untied",
                                           "llama_gqa2_bf16", "mistral_window6"));

}  // namespace
}  // namespace livekv
