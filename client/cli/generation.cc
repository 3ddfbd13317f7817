#include "client/cli/generation.h"

#include "absl/strings/str_format.h"
#include "common/allocator.h"
#include "common/status_macros.h"
#include "engine/tokenizer/tokenizer.h"

namespace livekv::cli {

absl::StatusOr<GenerationResult> GenerateText(const LoadedModel& model, CpuBackend* backend, absl::string_view prompt,
                                              const GenerateOptions& options, const PolicyOptions& policy,
                                              const std::function<void(absl::string_view)>& on_text) {
  LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->EncodeWithSpecials(prompt));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  LIVEKV_RETURN_IF_ERROR(policy.Validate(model.config.num_layers));
  HostAllocator host;
  const int64_t max_tokens = static_cast<int64_t>(ids.size()) + options.max_new_tokens + 1;
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, CreateKvPagePool(model.config, policy, max_tokens, &host));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PolicyKvContext> kv,
                          PolicyKvContext::Create(model.config, policy, pool.get(), backend->pool()));
  StreamingDecoder decoder(model.tokenizer.get());
  absl::Status decode_status;
  GenerationResult result;
  LIVEKV_RETURN_IF_ERROR(Generate(model.transformer.get(), kv.get(), ids, options,
                                  [&](int32_t token) {
                                    for (int32_t stop : options.stop_ids) {
                                      if (token == stop) return false;
                                    }
                                    absl::StatusOr<std::string> piece = decoder.Push(token);
                                    if (!piece.ok()) {
                                      decode_status = piece.status();
                                      return false;
                                    }
                                    result.text += *piece;
                                    on_text(*piece);
                                    return true;
                                  },
                                  &result.stats));
  LIVEKV_RETURN_IF_ERROR(decode_status);
  const std::string rest = decoder.Flush();
  result.text += rest;
  on_text(rest);
  result.counters = kv->counters();
  result.maintenance_seconds = kv->maintenance_seconds();
  return result;
}

std::string FormatCounters(const std::vector<LayerCounters>& counters, bool with_mass) {
  std::string out;
  for (size_t l = 0; l < counters.size(); ++l) {
    const LayerCounters& c = counters[l];
    out += absl::StrFormat("  layer %2d: %8.1f tokens", l, c.tokens_per_head_step());
    if (with_mass) out += absl::StrFormat("  mass %.3f", c.mean_mass());
    if (c.clusters_selected > 0) out += absl::StrFormat("  hit %.2f", c.hit_rate());
    out += "\n";
  }
  return out;
}

}  // namespace livekv::cli
