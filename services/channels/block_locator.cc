#include "services/channels/block_locator.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {

BlockLocator::BlockLocator(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version)
    : store_(store), session_id_(std::move(session_id)), lease_(std::move(lease)), version_(version) {}

BlockLocator::Key BlockLocator::KeyOf(const BlockDestination& b) {
  const int64_t which = b.block.kind == BlockRef::Kind::kPage      ? b.block.first_position
                        : b.block.kind == BlockRef::Kind::kCluster ? b.block.index
                                                                   : 0;
  return Key(b.layer, b.kv_head, static_cast<uint8_t>(b.block.kind), which);
}

absl::Status BlockLocator::Locate(const std::vector<BlockDestination>& blocks, std::vector<RunLocation>* out,
                                  DirectChannelStats* stats) {
  out->assign(blocks.size(), RunLocation{});
  // The uncached blocks, grouped by (layer, head) in the order given, as GrpcKvChannel groups a Recall.
  std::vector<KvStoreClient::BlockRequest> requests;
  std::vector<size_t> missing;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockDestination& b = blocks[i];
    auto it = cache_.find(KeyOf(b));
    if (it != cache_.end()) {
      (*out)[i] = it->second;
      ++stats->cached_blocks;
      continue;
    }
    if (requests.empty() || requests.back().layer != b.layer || requests.back().kv_head != b.kv_head) {
      requests.push_back({b.layer, b.kv_head, {}});
    }
    requests.back().blocks.push_back(b.block);
    missing.push_back(i);
  }
  if (missing.empty()) return absl::OkStatus();
  LIVEKV_ASSIGN_OR_RETURN(v1::ResolveBlocksResponse response,
                          store_->ResolveBlocks(session_id_, lease_, version_, requests));
  ++stats->resolve_calls;
  stats->resolved_blocks += static_cast<int64_t>(missing.size());
  for (size_t j = 0; j < missing.size(); ++j) {
    const v1::BlockLocation& p = response.locations(static_cast<int>(j));
    RunLocation loc{p.pool_id(), p.first_page(), p.num_pages(), p.tokens(), p.generation()};
    (*out)[missing[j]] = loc;
    cache_[KeyOf(blocks[missing[j]])] = loc;
  }
  return absl::OkStatus();
}

void BlockLocator::Forget(const BlockDestination& block) { cache_.erase(KeyOf(block)); }

void ForEachRunPiece(const PageLayout& L, int64_t tokens, size_t run_bytes,
                     const std::function<void(size_t offset, size_t length, bool copy)>& fn) {
  const size_t page_bytes = L.page_bytes();
  const size_t pages = run_bytes / page_bytes;
  const size_t full = std::min<size_t>(pages, static_cast<size_t>(std::max<int64_t>(0, tokens) / L.page_tokens));
  if (full > 0) fn(0, full * page_bytes, true);
  const size_t half = static_cast<size_t>(L.page_tokens) * L.row_bytes();
  for (size_t page = full; page < pages; ++page) {
    const int64_t rows = std::clamp<int64_t>(tokens - static_cast<int64_t>(page) * L.page_tokens, 0, L.page_tokens);
    const size_t valid = static_cast<size_t>(rows) * L.row_bytes();
    const size_t base = page * page_bytes;
    for (size_t h = 0; h < 2; ++h) {
      if (valid > 0) fn(base + h * half, valid, true);
      if (valid < half) fn(base + h * half + valid, half - valid, false);
    }
  }
}

void PlanRunCopy(const PageLayout& L, const RunLocation& loc, absl::Span<uint8_t> dst, std::vector<CopyPiece>* pieces) {
  const uint64_t run = uint64_t{loc.first_page} * L.page_bytes();
  ForEachRunPiece(L, loc.tokens, dst.size(), [&](size_t offset, size_t length, bool copy) {
    if (!copy) {
      std::memset(dst.data() + offset, 0, length);
      return;
    }
    if (!pieces->empty()) {
      CopyPiece& last = pieces->back();
      if (last.src + last.bytes == run + offset && last.dst + last.bytes == dst.data() + offset) {
        last.bytes += length;
        return;
      }
    }
    pieces->push_back({run + offset, dst.data() + offset, length});
  });
}

absl::Status CheckDestination(const BlockDestination& b, const RunLocation& loc, size_t page_bytes) {
  const size_t run = static_cast<size_t>(loc.num_pages) * page_bytes;
  if (b.destination.size() != run) {
    return absl::InvalidArgumentError(absl::StrCat(
        "destination of layer ", b.layer, " head ", b.kv_head, " block (kind ", static_cast<int>(b.block.kind),
        ", index ", b.block.index, ", position ", b.block.first_position, ") holds ", b.destination.size(),
        " bytes; the block's run is ", run, " (", loc.num_pages, " pages of ", page_bytes, ")"));
  }
  return absl::OkStatus();
}

}  // namespace livekv
