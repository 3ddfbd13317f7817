#include "engine/sampler.h"

#include <map>

#include "gtest/gtest.h"

namespace livekv {
namespace {

TEST(SamplerTest, GreedyTakesTheFirstMaximum) {
  Sampler s(SamplingParams{});
  const float logits[] = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.Sample(logits), 1);
}

TEST(SamplerTest, SameSeedSameTokens) {
  const float logits[] = {1.0f, 1.2f, 0.9f, 1.1f, 0.3f};
  SamplingParams p{.temperature = 1.0f, .seed = 42};
  Sampler a(p), b(p);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Sample(logits), b.Sample(logits));
}

TEST(SamplerTest, TemperatureSamplingFollowsTheSoftmax) {
  const float logits[] = {0.0f, std::log(3.0f)};  // probabilities 1/4 and 3/4
  Sampler s(SamplingParams{.temperature = 1.0f, .seed = 7});
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits);
  EXPECT_NEAR(ones / double(n), 0.75, 0.02);
}

TEST(SamplerTest, TopKAndTopPKeepOnlyTheMostLikely) {
  const float logits[] = {3.0f, 2.9f, 0.0f, -1.0f, 2.8f};
  Sampler k(SamplingParams{.temperature = 1.0f, .top_k = 2, .seed = 3});
  Sampler p(SamplingParams{.temperature = 1.0f, .top_p = 0.3f, .seed = 3});
  std::map<int, int> seen_k, seen_p;
  for (int i = 0; i < 2000; ++i) {
    ++seen_k[k.Sample(logits)];
    ++seen_p[p.Sample(logits)];
  }
  EXPECT_EQ(seen_k.size(), 2u);
  EXPECT_TRUE(seen_k.count(0) && seen_k.count(1));
  // The top token alone has ~36% of the mass, more than 0.3: nucleus is just {0}.
  EXPECT_EQ(seen_p.size(), 1u);
  EXPECT_TRUE(seen_p.count(0));
}

TEST(SamplerTest, ValidateNamesTheParameter) {
  EXPECT_EQ(SamplingParams{.temperature = -1}.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(SamplingParams{.top_p = 0}.Validate().message().find("top_p"), absl::string_view::npos);
  EXPECT_NE(SamplingParams{.top_p = 1.5f}.Validate().message().find("top_p"), absl::string_view::npos);
  EXPECT_NE(SamplingParams{.top_k = -2}.Validate().message().find("top_k"), absl::string_view::npos);
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace livekv
