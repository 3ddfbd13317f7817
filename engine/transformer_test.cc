#include "engine/transformer.h"

#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/dense_kv_cache.h"
#include "engine/generator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

ModelConfig TinyConfig(Architecture arch, int heads, int kv_heads, bool tied) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 97;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 3;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.attention_bias = arch == Architecture::kQwen2;
  return c;
}

struct Model {
  CpuBackend backend{CpuBackendOptions{.num_threads = 2}};
  std::unique_ptr<Transformer> transformer;
};

std::unique_ptr<Model> MakeModel(const ModelConfig& c, int64_t max_chunk = 64) {
  auto m = std::make_unique<Model>();
  auto w = DummyWeights(c, /*seed=*/7, &m->backend, /*stddev=*/0.2f);
  EXPECT_TRUE(w.ok()) << w.status();
  auto t = Transformer::Create(c, std::move(*w), &m->backend, TransformerOptions{.max_chunk = max_chunk});
  EXPECT_TRUE(t.ok()) << t.status();
  m->transformer = std::move(*t);
  return m;
}

std::vector<int32_t> Tokens(int n, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 37 + 11) % vocab;
  return t;
}

void ExpectLogitsClose(const std::vector<float>& a, const std::vector<float>& b, double rel) {
  ASSERT_EQ(a.size(), b.size());
  float mx = 0;
  for (float x : b) mx = std::max(mx, std::abs(x));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], rel * mx) << "at " << i;
}

struct Shape_ {
  Architecture arch;
  int heads, kv_heads;
  bool tied;
};

class TransformerConsistencyTest : public ::testing::TestWithParam<Shape_> {};

// Prefill of the whole sequence, chunked prefill and token-by-token decode are the same computation.
TEST_P(TransformerConsistencyTest, ChunkingAndDecodeAgreeWithFullPrefill) {
  const ModelConfig c = TinyConfig(GetParam().arch, GetParam().heads, GetParam().kv_heads, GetParam().tied);
  const std::vector<int32_t> tokens = Tokens(21, c.vocab_size);

  auto full = MakeModel(c);
  auto kv_full = DenseKvCache::Create(c, &full->backend, DType::kF32, 4).value();
  std::vector<float> all;
  ASSERT_TRUE(full->transformer->Forward(tokens, kv_full.get(), /*all_logits=*/true, &all).ok());
  ASSERT_EQ(all.size(), tokens.size() * c.vocab_size);
  EXPECT_EQ(kv_full->num_tokens(), 21);

  auto chunked = MakeModel(c, /*max_chunk=*/4);
  auto kv_chunked = DenseKvCache::Create(c, &chunked->backend, DType::kF32, 1).value();
  std::vector<float> all_chunked;
  ASSERT_TRUE(chunked->transformer->Forward(tokens, kv_chunked.get(), true, &all_chunked).ok());
  ExpectLogitsClose(all_chunked, all, 1e-5);

  auto stepwise = MakeModel(c);
  auto kv_step = DenseKvCache::Create(c, &stepwise->backend, DType::kF32, 2).value();
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<float> one;
    ASSERT_TRUE(stepwise->transformer->Forward({&tokens[i], 1}, kv_step.get(), false, &one).ok());
    std::vector<float> want(all.begin() + i * c.vocab_size, all.begin() + (i + 1) * c.vocab_size);
    ExpectLogitsClose(one, want, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, TransformerConsistencyTest,
                         ::testing::Values(Shape_{Architecture::kLlama, 4, 4, false},
                                           Shape_{Architecture::kLlama, 4, 2, true},
                                           Shape_{Architecture::kQwen2, 4, 1, false},
                                           Shape_{Architecture::kMistral, 6, 2, false}));

TEST(TransformerTest, Bf16KvCacheStaysCloseToFp32) {
  const ModelConfig c = TinyConfig(Architecture::kLlama, 4, 2, false);
  const std::vector<int32_t> tokens = Tokens(16, c.vocab_size);
  auto m = MakeModel(c);
  auto kv32 = DenseKvCache::Create(c, &m->backend, DType::kF32).value();
  auto kv16 = DenseKvCache::Create(c, &m->backend, DType::kBF16).value();
  std::vector<float> a, b;
  ASSERT_TRUE(m->transformer->Forward(tokens, kv32.get(), false, &a).ok());
  ASSERT_TRUE(m->transformer->Forward(tokens, kv16.get(), false, &b).ok());
  ExpectLogitsClose(b, a, 2e-2);
}

TEST(TransformerTest, SlidingWindowLimitsWhatTokensSee) {
  // With a window of 1, each token attends only to itself, so its logits do not depend on earlier tokens.
  ModelConfig c = TinyConfig(Architecture::kMistral, 4, 2, false);
  c.sliding_window = 1;
  auto m = MakeModel(c);
  auto kv_a = DenseKvCache::Create(c, &m->backend, DType::kF32).value();
  auto kv_b = DenseKvCache::Create(c, &m->backend, DType::kF32).value();
  const int32_t seq_a[] = {1, 2, 3, 50}, seq_b[] = {9, 8, 7, 50};
  std::vector<float> a, b;
  ASSERT_TRUE(m->transformer->Forward(seq_a, kv_a.get(), false, &a).ok());
  ASSERT_TRUE(m->transformer->Forward(seq_b, kv_b.get(), false, &b).ok());
  // Same token at the same position, nothing else visible: identical logits.
  ExpectLogitsClose(a, b, 1e-6);
}

TEST(TransformerTest, BadInputIsRejectedAndLeavesTheCacheUnchanged) {
  const ModelConfig c = TinyConfig(Architecture::kLlama, 4, 2, false);
  auto m = MakeModel(c);
  auto kv = DenseKvCache::Create(c, &m->backend, DType::kF32).value();
  std::vector<float> logits;
  const int32_t ok[] = {1, 2, 3};
  ASSERT_TRUE(m->transformer->Forward(ok, kv.get(), false, &logits).ok());

  const int32_t bad[] = {1, 97};
  absl::Status s = m->transformer->Forward(bad, kv.get(), false, &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token id 97"));
  EXPECT_EQ(kv->num_tokens(), 3);

  EXPECT_EQ(m->transformer->Forward({}, kv.get(), false, &logits).code(), absl::StatusCode::kInvalidArgument);

  std::vector<int32_t> too_long(510, 5);
  s = m->transformer->Forward(too_long, kv.get(), false, &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_position_embeddings of 512"));
  EXPECT_EQ(kv->num_tokens(), 3);
}

TEST(GeneratorTest, GreedyGenerationIsDeterministicAndStopsAtStopToken) {
  const ModelConfig c = TinyConfig(Architecture::kQwen2, 4, 2, true);
  auto m = MakeModel(c);
  const std::vector<int32_t> prompt = Tokens(9, c.vocab_size);
  auto run = [&](const GenerateOptions& o) {
    auto kv = DenseKvCache::Create(c, &m->backend, DType::kF32).value();
    std::vector<int32_t> out;
    GenerateStats stats;
    EXPECT_TRUE(Generate(m->transformer.get(), kv.get(), prompt, o,
                         [&](int32_t t) {
                           out.push_back(t);
                           return true;
                         },
                         &stats)
                    .ok());
    EXPECT_EQ(stats.generated_tokens, static_cast<int64_t>(out.size()));
    EXPECT_EQ(kv->num_tokens(), static_cast<int64_t>(prompt.size() + out.size() - 1));
    return out;
  };
  GenerateOptions o;
  o.max_new_tokens = 12;
  const std::vector<int32_t> a = run(o), b = run(o);
  EXPECT_EQ(a.size(), 12u);
  EXPECT_EQ(a, b);
  o.stop_ids = {a[4]};
  const std::vector<int32_t> stopped = run(o);
  const size_t first = std::find(a.begin(), a.end(), a[4]) - a.begin();
  EXPECT_EQ(stopped, std::vector<int32_t>(a.begin(), a.begin() + first + 1));
}

}  // namespace
}  // namespace livekv
