#include "cuda/ops/attention_plan.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace cuda {
namespace {

using kernels::DecodeItem;
using kernels::RunDesc;

size_t Align16(size_t x) { return (x + 15) / 16 * 16; }

template <typename T>
const T* At(const void* base, size_t off) {
  return reinterpret_cast<const T*>(static_cast<const uint8_t*>(base) + off);
}

}  // namespace

absl::StatusOr<KvPlan> KvPlan::Create(absl::Span<const ContextKv* const> contexts, int32_t num_kv_heads,
                                      int32_t head_dim, const KvPlanOptions& options,
                                      absl::Span<const int64_t> query_positions) {
  if (contexts.empty()) return absl::InvalidArgumentError("kv plan: no sequences");
  if (num_kv_heads <= 0 || head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv plan: need num_kv_heads > 0 and head_dim > 0; saw ", num_kv_heads, ", ", head_dim));
  }
  if (options.max_runs_per_item < 1 || options.max_runs_per_item > kernels::kMaxRunsPerItem ||
      options.min_tokens_per_item < 1 || options.target_items < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv plan: bad options: max_runs_per_item ", options.max_runs_per_item,
                                                   ", min_tokens_per_item ", options.min_tokens_per_item,
                                                   ", target_items ", options.target_items));
  }
  if (!query_positions.empty() && query_positions.size() != contexts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("kv plan: ", query_positions.size(), " query positions for ",
                                                   contexts.size(), " sequences"));
  }
  const bool positional = !query_positions.empty();
  const int32_t num_seqs = static_cast<int32_t>(contexts.size());
  const int32_t slots = num_seqs * num_kv_heads;
  const size_t row_bytes = static_cast<size_t>(head_dim) * 2;

  std::vector<RunDesc> runs;
  std::vector<int32_t> slot_runs(slots + 1, 0), slot_tokens(slots, 0);
  int64_t total_tokens = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const ContextKv* ctx = contexts[s];
    if (ctx != nullptr) {
      if (ctx->dtype != DType::kBF16) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv plan: sequence ", s, " has ", DTypeName(ctx->dtype), " KV; the CUDA kernels read BF16"));
      }
      if (static_cast<int32_t>(ctx->heads.size()) != num_kv_heads) {
        return absl::InvalidArgumentError(absl::StrCat("kv plan: sequence ", s, " has ", ctx->heads.size(),
                                                       " KV heads, expected ", num_kv_heads));
      }
    }
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      const int32_t slot = s * num_kv_heads + h;
      slot_runs[slot] = static_cast<int32_t>(runs.size());
      int64_t tokens = 0;
      if (ctx != nullptr) {
        for (size_t i = 0; i < ctx->heads[h].size(); ++i) {
          const KvRun& r = ctx->heads[h][i];
          if (r.n < 0) {
            return absl::InvalidArgumentError(
                absl::StrCat("kv plan: sequence ", s, " head ", h, " run ", i, " has ", r.n, " rows"));
          }
          if (r.n == 0) continue;
          if (r.k == nullptr || r.v == nullptr || reinterpret_cast<uintptr_t>(r.k) % 16 != 0 ||
              reinterpret_cast<uintptr_t>(r.v) % 16 != 0 || row_bytes % 16 != 0) {
            return absl::InvalidArgumentError(absl::StrCat("kv plan: sequence ", s, " head ", h, " run ", i,
                                                           ": K/V rows must be non-null and 16-byte aligned"));
          }
          if (positional && r.first_position < 0) {
            return absl::InvalidArgumentError(absl::StrCat("kv plan: sequence ", s, " head ", h, " run ", i,
                                                           " has no position; a sliding window needs positional runs"));
          }
          if (tokens + r.n > INT32_MAX) {
            return absl::InvalidArgumentError(absl::StrCat("kv plan: sequence ", s, " head ", h, " has more than ",
                                                           INT32_MAX, " tokens"));
          }
          runs.push_back(RunDesc{static_cast<const kernels::bf16*>(r.k), static_cast<const kernels::bf16*>(r.v), r.n,
                                 static_cast<int32_t>(tokens), r.first_position});
          tokens += r.n;
        }
      }
      slot_tokens[slot] = static_cast<int32_t>(tokens);
      total_tokens += tokens;
    }
  }
  slot_runs[slots] = static_cast<int32_t>(runs.size());
  if (runs.size() > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError("kv plan: too many runs");

  // Split-KV items.
  int64_t per_item = std::max<int64_t>(options.min_tokens_per_item,
                                       (total_tokens + options.target_items - 1) / options.target_items);
  // Long items start on multiples of 16 tokens (the tensor-core kernel's key tile), so a tile never straddles a
  // page of 16 or 32 tokens and its rows stay contiguous (one coalesced copy per tile).
  if (per_item >= 256) per_item = (per_item + 15) / 16 * 16;
  std::vector<DecodeItem> items;
  std::vector<int32_t> slot_items(slots + 1, 0);
  for (int32_t slot = 0; slot < slots; ++slot) {
    const int32_t first = static_cast<int32_t>(items.size());
    slot_items[slot] = first;
    const int32_t lo = slot_runs[slot], hi = slot_runs[slot + 1];
    const int32_t tokens = slot_tokens[slot];
    if (tokens == 0) {
      items.push_back(DecodeItem{slot, lo, 0, 0, 0, 0, first, 0});
    } else {
      int32_t r = lo;
      int32_t t = 0;
      while (t < tokens) {
        while (r + 1 < hi && runs[r + 1].token_begin <= t) ++r;
        int64_t end = std::min<int64_t>(tokens, t + per_item);
        // Limit the runs the item spans.
        if (r + options.max_runs_per_item < hi && runs[r + options.max_runs_per_item].token_begin < end) {
          end = runs[r + options.max_runs_per_item].token_begin;
        }
        int32_t last = r;
        while (last + 1 < hi && runs[last + 1].token_begin < end) ++last;
        items.push_back(DecodeItem{slot, r, last - r + 1, t, static_cast<int32_t>(end), 0, first, 0});
        t = static_cast<int32_t>(end);
      }
    }
    const int32_t count = static_cast<int32_t>(items.size()) - first;
    for (int32_t i = first; i < first + count; ++i) items[i].num_slot_items = count;
  }
  slot_items[slots] = static_cast<int32_t>(items.size());

  KvPlan plan;
  plan.num_seqs_ = num_seqs;
  plan.num_kv_heads_ = num_kv_heads;
  plan.num_runs_ = static_cast<int32_t>(runs.size());
  plan.num_items_ = static_cast<int32_t>(items.size());
  plan.max_slot_tokens_ = slots > 0 ? *std::max_element(slot_tokens.begin(), slot_tokens.end()) : 0;
  plan.has_positions_ = positional;
  size_t off = 0;
  plan.runs_off_ = off;
  off = Align16(off + runs.size() * sizeof(RunDesc));
  plan.items_off_ = off;
  off = Align16(off + items.size() * sizeof(DecodeItem));
  plan.slot_runs_off_ = off;
  off = Align16(off + slot_runs.size() * sizeof(int32_t));
  plan.slot_tokens_off_ = off;
  off = Align16(off + slot_tokens.size() * sizeof(int32_t));
  plan.slot_items_off_ = off;
  off = Align16(off + slot_items.size() * sizeof(int32_t));
  plan.positions_off_ = off;
  off = Align16(off + num_seqs * sizeof(int64_t));
  plan.bytes_.assign(off, 0);
  uint8_t* b = plan.bytes_.data();
  std::memcpy(b + plan.runs_off_, runs.data(), runs.size() * sizeof(RunDesc));
  std::memcpy(b + plan.items_off_, items.data(), items.size() * sizeof(DecodeItem));
  std::memcpy(b + plan.slot_runs_off_, slot_runs.data(), slot_runs.size() * sizeof(int32_t));
  std::memcpy(b + plan.slot_tokens_off_, slot_tokens.data(), slot_tokens.size() * sizeof(int32_t));
  std::memcpy(b + plan.slot_items_off_, slot_items.data(), slot_items.size() * sizeof(int32_t));
  if (positional) std::memcpy(b + plan.positions_off_, query_positions.data(), num_seqs * sizeof(int64_t));
  return plan;
}

kernels::RunTableView KvPlan::Table(const void* base) const {
  return kernels::RunTableView{At<RunDesc>(base, runs_off_), At<int32_t>(base, slot_runs_off_),
                               At<int32_t>(base, slot_tokens_off_)};
}

const kernels::DecodeItem* KvPlan::Items(const void* base) const { return At<DecodeItem>(base, items_off_); }
const int32_t* KvPlan::SlotItems(const void* base) const { return At<int32_t>(base, slot_items_off_); }
const int64_t* KvPlan::QueryPositions(const void* base) const { return At<int64_t>(base, positions_off_); }
const kernels::DecodeItem* KvPlan::host_items() const { return At<DecodeItem>(bytes_.data(), items_off_); }
const kernels::RunDesc* KvPlan::host_runs() const { return At<RunDesc>(bytes_.data(), runs_off_); }

}  // namespace cuda
}  // namespace livekv
