// File: services/channels/kv_channel.h
//
// How KV bytes move from the KV store into a compute worker. One interface; the store offers what the worker can
// use and the worker picks the fastest (ARCHITECTURE.md §5):
//
//   shm   same host: the store's page arena is a POSIX shared-memory segment; the worker maps it read-only and
//         copies block runs straight out of it
//   ucx   other hosts: one-sided RMA gets from the store's registered arena (RDMA where present, TCP elsewhere)
//   grpc  the fallback for any client: KvStore.Recall, streamed in chunks
//
// A channel serves one session under one lease, for the index version it was opened with.
//
// Thread-safety: Fetch may be called from one thread at a time (a decode call's recall thread).
#ifndef LIVEKV_SERVICES_CHANNELS_KV_CHANNEL_H_
#define LIVEKV_SERVICES_CHANNELS_KV_CHANNEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvcache/sequence_kv.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {

// One block to fetch and where its page run goes (exactly SequenceKv::BlockBytes' size for the block).
struct BlockDestination {
  int32_t layer = 0;
  int32_t kv_head = 0;
  BlockRef block;
  absl::Span<uint8_t> destination;
};

class KvChannel {
 public:
  virtual ~KvChannel() = default;
  virtual std::string name() const = 0;  // "shm", "ucx", "grpc"

  // Copies every block's bytes into its destination. `bytes_out` (may be null) receives the payload size.
  // UNAVAILABLE when the channel itself failed (the store or the link is gone; a caller may fall back to another
  // channel); ABORTED when the session changed so that a block no longer exists (reload the index); NOT_FOUND /
  // INVALID_ARGUMENT as KvStore.Recall. On error the destinations' contents are unspecified.
  virtual absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) = 0;
};

// The gRPC path: KvStore.Recall.
class GrpcKvChannel : public KvChannel {
 public:
  GrpcKvChannel(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version);
  std::string name() const override { return "grpc"; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override;

 private:
  KvStoreClient* const store_;
  const std::string session_id_;
  const StoreLease lease_;
  const int64_t version_;
};

// Tries `primary`; when it returns UNAVAILABLE, switches to `fallback` for this and every later fetch (the primary
// is not retried). Counts the switches.
class FallbackKvChannel : public KvChannel {
 public:
  FallbackKvChannel(std::unique_ptr<KvChannel> primary, std::unique_ptr<KvChannel> fallback);
  std::string name() const override;
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override;
  bool fell_back() const { return primary_ == nullptr; }

 private:
  std::unique_ptr<KvChannel> primary_;
  std::unique_ptr<KvChannel> fallback_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_CHANNELS_KV_CHANNEL_H_
