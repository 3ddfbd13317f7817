#include "services/channels/ucx_kv_channel.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {

absl::StatusOr<std::unique_ptr<UcxKvChannel>> UcxKvChannel::Open(KvStoreClient* store, std::string session_id,
                                                                 StoreLease lease, int64_t version,
                                                                 const v1::UcxOffer& offer, const PageLayout& layout,
                                                                 const Options& options) {
  if (offer.pools_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("the store's UCX offer lists ", offer.pools_size(),
                                                   " pools; a session has one"));
  }
  const v1::UcxPool& pool = offer.pools(0);
  if (pool.page_bytes() != static_cast<int64_t>(layout.page_bytes()) || pool.num_pages() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("the store's pool ", pool.pool_id(), " has ", pool.num_pages(),
                                                   " pages of ", pool.page_bytes(), " bytes; the session's pages are ",
                                                   layout.page_bytes()));
  }
  LIVEKV_ASSIGN_OR_RETURN(ucx::Context * context, ucx::ClientContext());
  std::unique_ptr<UcxKvChannel> ch(
      new UcxKvChannel(store, std::move(session_id), std::move(lease), version, layout, options));
  LIVEKV_ASSIGN_OR_RETURN(ch->endpoint_, ucx::Endpoint::Connect(context, offer.worker_address()));
  LIVEKV_ASSIGN_OR_RETURN(ch->arena_key_, ch->endpoint_->AddRemoteKey(pool.rkey()));
  LIVEKV_ASSIGN_OR_RETURN(ch->generation_key_, ch->endpoint_->AddRemoteKey(pool.generation_rkey()));
  ch->pool_id_ = pool.pool_id();
  ch->num_pages_ = static_cast<uint32_t>(pool.num_pages());
  ch->page_bytes_ = static_cast<size_t>(pool.page_bytes());
  ch->arena_address_ = pool.base_address();
  ch->generation_address_ = pool.generation_address();
  return ch;
}

absl::Status UcxKvChannel::Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) {
  ++stats_.fetches;
  LIVEKV_RETURN_IF_ERROR(endpoint_->broken());
  LIVEKV_RETURN_IF_ERROR(locator_.Locate(blocks, &locations_, &stats_));
  for (size_t i = 0; i < blocks.size(); ++i) {
    const RunLocation& loc = locations_[i];
    if (loc.pool_id != pool_id_ || loc.num_pages == 0 || uint64_t{loc.first_page} + loc.num_pages > num_pages_) {
      return absl::InternalError(absl::StrCat("the store located a block at pool ", loc.pool_id, " pages [",
                                              loc.first_page, ", ", uint64_t{loc.first_page} + loc.num_pages,
                                              "); the channel reads pool ", pool_id_, " of ", num_pages_, " pages"));
    }
    LIVEKV_RETURN_IF_ERROR(CheckDestination(blocks[i], loc, page_bytes_));
  }
  int64_t bytes = 0;
  pieces_.clear();
  for (size_t i = 0; i < blocks.size(); ++i) {
    PlanRunCopy(layout_, locations_[i], blocks[i].destination, &pieces_);
    bytes += static_cast<int64_t>(blocks[i].destination.size());
  }
  for (const CopyPiece& p : pieces_) {
    LIVEKV_RETURN_IF_ERROR(endpoint_->Get(p.dst, p.bytes, arena_address_ + p.src, arena_key_));
  }
  LIVEKV_RETURN_IF_ERROR(endpoint_->WaitAll(options_.timeout));
  // The generations, read only after every data get completed.
  generations_.assign(blocks.size(), 0);
  for (size_t i = 0; i < blocks.size(); ++i) {
    LIVEKV_RETURN_IF_ERROR(endpoint_->Get(&generations_[i], sizeof(uint64_t),
                                          generation_address_ + sizeof(uint64_t) * locations_[i].first_page,
                                          generation_key_));
  }
  LIVEKV_RETURN_IF_ERROR(endpoint_->WaitAll(options_.timeout));
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (generations_[i] == locations_[i].generation) continue;
    ++stats_.stale_runs;
    for (const BlockDestination& b : blocks) locator_.Forget(b);
    return absl::AbortedError(absl::StrCat("pages [", locations_[i].first_page, ", ",
                                           locations_[i].first_page + locations_[i].num_pages, ") of pool ", pool_id_,
                                           " changed generation since they were resolved (the lease ended and the ",
                                           "store reused them); acquire a new lease"));
  }
  stats_.bytes += bytes;
  if (bytes_out != nullptr) *bytes_out = bytes;
  return absl::OkStatus();
}

}  // namespace livekv
