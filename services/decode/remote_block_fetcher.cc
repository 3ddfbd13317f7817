#include "services/decode/remote_block_fetcher.h"

#include <chrono>

#include "common/status_macros.h"

namespace livekv {

RemoteBlockFetcher::RemoteBlockFetcher(KvStoreClient* store, std::string session_id, StoreLease lease,
                                       int64_t version, SequenceKv* mirror)
    : store_(store),
      session_id_(std::move(session_id)),
      lease_(std::move(lease)),
      version_(version),
      mirror_(mirror),
      remote_tokens_(mirror->num_tokens()) {
  const KvGeometry& g = mirror->geometry();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) remote_clusters_.push_back(mirror->head(l, h).num_clusters());
  }
}

bool RemoteBlockFetcher::IsRemote(int32_t layer, int32_t head, const BlockRef& b) const {
  switch (b.kind) {
    case BlockRef::Kind::kSink: return true;
    case BlockRef::Kind::kCluster:
      return b.index < remote_clusters_[static_cast<size_t>(layer) * mirror_->geometry().num_kv_heads + head];
    case BlockRef::Kind::kPage: return b.first_position < remote_tokens_;
  }
  return false;
}

absl::Status RemoteBlockFetcher::Fetch(const std::vector<KvStoreClient::BlockRequest>& requests) {
  if (requests.empty()) return absl::OkStatus();
  const auto t0 = std::chrono::steady_clock::now();
  int64_t bytes = 0;
  LIVEKV_RETURN_IF_ERROR(store_->Recall(session_id_, lease_, version_, requests, mirror_, &bytes));
  recall_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  recalled_bytes_ += bytes;
  for (const auto& r : requests) {
    for (const BlockRef& b : r.blocks) resident_.insert(KeyOf(r.layer, r.kv_head, b));
    recalled_blocks_ += r.blocks.size();
  }
  return absl::OkStatus();
}

absl::Status RemoteBlockFetcher::FetchEager(bool all_positional) {
  std::vector<KvStoreClient::BlockRequest> requests;
  const KvGeometry& g = mirror_->geometry();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const HeadKv& head = mirror_->head(l, h);
      KvStoreClient::BlockRequest r{l, h, {}};
      if (head.sink_count() > 0) r.blocks.push_back({BlockRef::Kind::kSink, 0, 0});
      const int32_t first = all_positional ? 0 : std::max(0, head.num_pages() - 1);
      for (int32_t p = first; p < head.num_pages(); ++p) {
        r.blocks.push_back({BlockRef::Kind::kPage, p, head.page(p).first_position});
      }
      if (!r.blocks.empty()) requests.push_back(std::move(r));
    }
  }
  return Fetch(requests);
}

absl::Status RemoteBlockFetcher::EnsureResident(const SequenceKv& kv, int32_t layer, const LayerSelection& sel) {
  std::vector<KvStoreClient::BlockRequest> requests;
  for (int32_t h = 0; h < static_cast<int32_t>(sel.heads.size()); ++h) {
    KvStoreClient::BlockRequest r{layer, h, {}};
    for (const BlockRef& b : kv.SelectedBlocks(layer, h, sel.heads[h])) {
      if (IsRemote(layer, h, b) && !resident_.contains(KeyOf(layer, h, b))) r.blocks.push_back(b);
    }
    if (!r.blocks.empty()) requests.push_back(std::move(r));
  }
  return Fetch(requests);
}

}  // namespace livekv
