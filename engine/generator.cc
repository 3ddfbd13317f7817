#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "common/status_macros.h"

namespace livekv {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

absl::Status Generate(Transformer* model, KvContext* kv, absl::Span<const int32_t> prompt,
                      const GenerateOptions& options, const std::function<bool(int32_t)>& on_token,
                      GenerateStats* stats) {
  LIVEKV_RETURN_IF_ERROR(options.sampling.Validate());
  if (options.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  *stats = GenerateStats();
  stats->prompt_tokens = static_cast<int64_t>(prompt.size());
  if (options.max_new_tokens == 0) return absl::OkStatus();
  Sampler sampler(options.sampling);
  const int64_t vocab = model->config().vocab_size;
  std::vector<float> logits;

  auto t0 = std::chrono::steady_clock::now();
  LIVEKV_RETURN_IF_ERROR(model->Forward(prompt, kv, /*all_logits=*/false, &logits));
  stats->prefill_seconds = SecondsSince(t0);

  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sampler.Sample(absl::MakeConstSpan(logits.data() + logits.size() - vocab, vocab));
    ++stats->generated_tokens;
    const bool stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end();
    if (!on_token(token) || stop || i + 1 == options.max_new_tokens) break;
    const int32_t next[] = {token};
    LIVEKV_RETURN_IF_ERROR(model->Forward(next, kv, /*all_logits=*/false, &logits));
  }
  stats->decode_seconds = SecondsSince(t0);
  return absl::OkStatus();
}

}  // namespace livekv
