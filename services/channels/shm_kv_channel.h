// File: services/channels/shm_kv_channel.h
//
// The shared-memory KV channel (ARCHITECTURE.md §5, same host): the store's pool arena and its generation table
// are POSIX shared-memory segments (common/shm/shm_arena.h); the worker maps them read-only (O_RDONLY, PROT_READ)
// once per process and copies block runs out of them with memcpy, no store thread involved.
//
//   LIVEKV_ASSIGN_OR_RETURN(v1::OpenChannelResponse offer, store.OpenChannel(id, lease, {v1::CHANNEL_KIND_SHM}));
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<ShmKvChannel> ch,
//                           ShmKvChannel::Open(&store, id, lease, version, offer.shm(), layout, {}));
//   LIVEKV_RETURN_IF_ERROR(ch->Fetch(blocks, &bytes));
// (OpenKvChannel in channel_factory.h does this and picks the channel.)
//
// Fetch: locate the blocks (BlockLocator: cached per lease, one ResolveBlocks for the new ones), then per block
// check its generation, copy its token rows and zero the rest; then, after an acquire fence, check every block's
// generation again (common/shm/generation_table.h). A changed generation means the lease ended and the run may
// have been reused while it was copied: the block's location is forgotten and Fetch is ABORTED (the caller
// reacquires a lease). Last, Fetch checks that the store still holds its segments (ShmSegment::OwnerAlive):
//
// When the store dies, its segments are unlinked (or left for RemoveStaleSegments after a crash) but stay mapped
// here, frozen: nothing writes them any more, so a copy out of them is not torn, but its lease is gone with the
// store. Fetch therefore answers UNAVAILABLE once the store's process has released its segments, like the UCX and
// gRPC channels, and FallbackKvChannel or the caller moves on (to a store that is back: a new channel). The
// mapping is dropped from the process cache when the last channel using it goes.
//
// Thread-safety: Fetch from one thread at a time (KvChannel's contract); channels are independent.
#ifndef LIVEKV_SERVICES_CHANNELS_SHM_KV_CHANNEL_H_
#define LIVEKV_SERVICES_CHANNELS_SHM_KV_CHANNEL_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/shm/shm_segment.h"
#include "kvcache/page_layout.h"
#include "proto/livekv/v1/kvstore.pb.h"
#include "services/channels/block_locator.h"
#include "services/channels/kv_channel.h"

namespace livekv {

// The process's read-only mappings of store segments, by name, shared by every channel. A mapping whose store has
// released it (dead or gone) and that no channel uses any more is dropped at the next Get.
// Thread-safety: thread-safe.
class ShmMappings {
 public:
  static ShmMappings& Process();

  // The mapping of `name`, opening it on first use (populated: its page tables filled up front, so copies do not
  // fault). ShmSegment::OpenReadOnly's errors (NOT_FOUND: no such segment on this host).
  absl::StatusOr<std::shared_ptr<const ShmSegment>> Get(const std::string& name, bool populate);
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const ShmSegment>> mappings_ ABSL_GUARDED_BY(mu_);
};

class ShmKvChannel : public KvChannel {
 public:
  struct Options {
    bool populate = true;  // pre-fault a new mapping's page tables
  };

  // `store` is borrowed and must outlive the channel. NOT_FOUND when a segment of the offer cannot be opened (the
  // store runs on another host); FAILED_PRECONDITION when the segments are smaller than the offer says;
  // INVALID_ARGUMENT for an offer without the session's pool.
  static absl::StatusOr<std::unique_ptr<ShmKvChannel>> Open(KvStoreClient* store, std::string session_id,
                                                            StoreLease lease, int64_t version,
                                                            const v1::ShmOffer& offer, const PageLayout& layout,
                                                            const Options& options);

  std::string name() const override { return "shm"; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override;

  const DirectChannelStats& stats() const { return stats_; }

 private:
  ShmKvChannel(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version,
               const PageLayout& layout)
      : locator_(store, std::move(session_id), std::move(lease), version), layout_(layout) {}

  BlockLocator locator_;
  const PageLayout layout_;
  uint32_t pool_id_ = 0;
  uint32_t num_pages_ = 0;
  size_t page_bytes_ = 0;
  std::shared_ptr<const ShmSegment> arena_;
  std::shared_ptr<const ShmSegment> generations_;
  DirectChannelStats stats_;
  std::vector<RunLocation> locations_;  // scratch
  std::vector<CopyPiece> pieces_;       // scratch
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_CHANNELS_SHM_KV_CHANNEL_H_
