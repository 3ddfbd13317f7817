#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace livekv {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, saw ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], saw ", top_p));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, saw ", top_k));
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), state_(params.seed) {}

double Sampler::NextUniform() {
  // SplitMix64: small, fast, and the same sequence on every platform.
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  const int32_t n = static_cast<int32_t>(logits.size());
  if (params_.temperature == 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return best;
  }
  scratch_.resize(n);
  for (int32_t i = 0; i < n; ++i) scratch_[i] = {logits[i] / params_.temperature, i};
  // Most likely first; equal logits in id order, so the result does not depend on the sort's stability.
  auto more_likely = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int32_t keep = n;
  if (params_.top_k > 0 && params_.top_k < n) {
    keep = params_.top_k;
    std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), more_likely);
  } else {
    std::sort(scratch_.begin(), scratch_.end(), more_likely);
  }
  const float max_logit = scratch_[0].first;
  double total = 0.0;
  std::vector<double> probs(keep);
  for (int32_t i = 0; i < keep; ++i) total += (probs[i] = std::exp(static_cast<double>(scratch_[i].first - max_logit)));
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    int32_t cut = keep;
    for (int32_t i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = 0.0;
    for (int32_t i = 0; i < keep; ++i) total += probs[i];
  }
  double u = NextUniform() * total;
  for (int32_t i = 0; i < keep; ++i) {
    u -= probs[i];
    if (u < 0.0) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;
}

}  // namespace livekv
