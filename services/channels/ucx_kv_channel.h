// File: services/channels/ucx_kv_channel.h
//
// The UCX KV channel (ARCHITECTURE.md §5, any host): one-sided RMA gets from the store's registered pool arena
// (UCP: RDMA on InfiniBand/RoCE, TCP elsewhere) straight into the caller's destinations; the store's CPU only
// progresses its worker. Tests and benchmarks keep UCX on loopback with UCX_NET_DEVICES=lo.
//
//   LIVEKV_ASSIGN_OR_RETURN(v1::OpenChannelResponse offer, store.OpenChannel(id, lease, {v1::CHANNEL_KIND_UCX}));
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<UcxKvChannel> ch,
//                           UcxKvChannel::Open(&store, id, lease, version, offer.ucx(), layout, {}));
//   LIVEKV_RETURN_IF_ERROR(ch->Fetch(blocks, &bytes));
//
// Fetch: locate the blocks (BlockLocator), get every block's token rows (one get for a run's complete pages, two
// for a partial page's K and V rows; the rest is zeroed locally), wait for them, then get each run's first-page
// generation and compare it with the resolved one (the gets for generations are issued after the data gets
// completed, which orders them as the shared-memory reader's fence does; common/shm/generation_table.h). A changed
// generation is ABORTED (the lease ended and the run was reused). A get that fails, a store that died (the
// endpoint's peer-failure handling reports it) or gets that do not complete within Options::timeout are
// UNAVAILABLE, and the channel stays broken (a new channel reconnects).
//
// Thread-safety: Fetch from one thread at a time (KvChannel's contract).
#ifndef LIVEKV_SERVICES_CHANNELS_UCX_KV_CHANNEL_H_
#define LIVEKV_SERVICES_CHANNELS_UCX_KV_CHANNEL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvcache/page_layout.h"
#include "proto/livekv/v1/kvstore.pb.h"
#include "services/channels/block_locator.h"
#include "services/channels/kv_channel.h"
#include "services/channels/ucx.h"

namespace livekv {

class UcxKvChannel : public KvChannel {
 public:
  struct Options {
    absl::Duration timeout = absl::Seconds(10);  // per Fetch, for its gets to complete
  };

  // `store` is borrowed and must outlive the channel. UNAVAILABLE when UCX cannot start here or the store's worker
  // cannot be reached; INVALID_ARGUMENT for an offer without the session's pool.
  static absl::StatusOr<std::unique_ptr<UcxKvChannel>> Open(KvStoreClient* store, std::string session_id,
                                                            StoreLease lease, int64_t version,
                                                            const v1::UcxOffer& offer, const PageLayout& layout,
                                                            const Options& options);

  std::string name() const override { return "ucx"; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override;

  const DirectChannelStats& stats() const { return stats_; }

 private:
  UcxKvChannel(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version,
               const PageLayout& layout, const Options& options)
      : locator_(store, std::move(session_id), std::move(lease), version), layout_(layout), options_(options) {}

  BlockLocator locator_;
  const PageLayout layout_;
  const Options options_;
  std::unique_ptr<ucx::Endpoint> endpoint_;
  uint32_t pool_id_ = 0;
  uint32_t num_pages_ = 0;
  size_t page_bytes_ = 0;
  uint64_t arena_address_ = 0;
  uint64_t generation_address_ = 0;
  int arena_key_ = -1;
  int generation_key_ = -1;
  DirectChannelStats stats_;
  std::vector<RunLocation> locations_;  // scratch
  std::vector<CopyPiece> pieces_;       // scratch
  std::vector<uint64_t> generations_;   // scratch: gets land here
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_CHANNELS_UCX_KV_CHANNEL_H_
