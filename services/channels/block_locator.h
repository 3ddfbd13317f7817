// File: services/channels/block_locator.h
//
// What the shared-memory and UCX channels have in common: they read blocks straight out of the store's pool
// memory, so they must learn where each block lies (KvStore.ResolveBlocks, which also pins the block's run for the
// lease) and copy only the rows that hold tokens (the rest of a run reads as zero, as in KvStore.Recall).
//
// BlockLocator caches locations for the channel's lease: a block is resolved once, on the first Fetch that asks for
// it (all of a Fetch's new blocks in one ResolveBlocks), and later Fetches of it need no RPC. A cached location stays
// valid while the lease lives, because the store keeps the run pinned until the lease ends; after that the run's
// generation changes, the reader notices (common/shm/generation_table.h) and Forget()s it.
//
// Thread-safety: thread-compatible (a channel's Fetch runs on one thread at a time).
#ifndef LIVEKV_SERVICES_CHANNELS_BLOCK_LOCATOR_H_
#define LIVEKV_SERVICES_CHANNELS_BLOCK_LOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kvcache/page_layout.h"
#include "services/channels/kv_channel.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {

// Where one block lies (BlockLocation of kvstore.proto).
struct RunLocation {
  uint32_t pool_id = 0;
  uint32_t first_page = 0;
  uint32_t num_pages = 0;
  int64_t tokens = 0;
  uint64_t generation = 0;
};

// Counters of a direct (shm or UCX) channel, for tests and metrics.
struct DirectChannelStats {
  int64_t fetches = 0;
  int64_t resolve_calls = 0;    // ResolveBlocks RPCs
  int64_t resolved_blocks = 0;  // blocks they located
  int64_t cached_blocks = 0;    // blocks served from the cache, without an RPC
  int64_t bytes = 0;            // payload copied
  int64_t stale_runs = 0;       // runs whose generation changed (ABORTED fetches)
};

class BlockLocator {
 public:
  // `store` is borrowed and must outlive the locator.
  BlockLocator(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version);

  // One location per block of `blocks`, in order; resolves the uncached ones with one ResolveBlocks. Errors are
  // ResolveBlocks' (NOT_FOUND once the lease is gone, UNAVAILABLE when the store is).
  absl::Status Locate(const std::vector<BlockDestination>& blocks, std::vector<RunLocation>* out,
                      DirectChannelStats* stats);
  // Drops a block's cached location (its run went stale).
  void Forget(const BlockDestination& block);

 private:
  using Key = std::tuple<int32_t, int32_t, uint8_t, int64_t>;  // layer, head, kind, index or first position
  static Key KeyOf(const BlockDestination& b);

  KvStoreClient* const store_;
  const std::string session_id_;
  const StoreLease lease_;
  const int64_t version_;
  absl::flat_hash_map<Key, RunLocation> cache_;
};

// Splits a run of `run_bytes` bytes holding `tokens` tokens (layout `L`) into consecutive pieces to copy and pieces
// to zero: the leading complete pages in one piece, then, per partial page, its K rows and V rows that hold tokens
// (copy) and the rows past them (zero). Calls fn(offset, length, copy) in increasing offset order.
void ForEachRunPiece(const PageLayout& L, int64_t tokens, size_t run_bytes,
                     const std::function<void(size_t offset, size_t length, bool copy)>& fn);

// One copy out of a pool: bytes [src, src + bytes) of the arena (offsets from its base) to dst.
struct CopyPiece {
  uint64_t src = 0;
  uint8_t* dst = nullptr;
  size_t bytes = 0;
};

// Plans the copy of a block's run into `dst` (its destination, exactly the run): appends the token rows' copies to
// `pieces` — merged into the previous piece when both its source and its destination continue it, so runs that
// lie back to back in the pool and in the destinations (consecutive clusters of a head, in order) become one
// copy — and zeroes the rows past the tokens in `dst` now.
void PlanRunCopy(const PageLayout& L, const RunLocation& loc, absl::Span<uint8_t> dst, std::vector<CopyPiece>* pieces);

// INVALID_ARGUMENT when a block's destination is not exactly its run (num_pages * page_bytes), naming the block.
absl::Status CheckDestination(const BlockDestination& b, const RunLocation& loc, size_t page_bytes);

}  // namespace livekv

#endif  // LIVEKV_SERVICES_CHANNELS_BLOCK_LOCATOR_H_
