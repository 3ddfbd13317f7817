// File: services/channels/channel_factory.h
//
// Picks the fastest KV channel a worker can use to a store (ARCHITECTURE.md §5):
//   1. shared memory, when the store offers it and its segments can be opened here (that is the test for "same
//      host": no hostnames are compared);
//   2. otherwise UCX, when the store offers it and UCX starts here;
//   3. otherwise gRPC (KvStore.Recall).
// Each channel comes wrapped in FallbackKvChannel with the next one behind it, so a channel that fails with
// UNAVAILABLE mid-session falls back: shm → UCX (when offered; its endpoint is opened only then) → gRPC, and
// UCX → gRPC.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<KvChannel> channel,
//                           OpenKvChannel(&store, session_id, lease, index_version, ChannelPreference{}));
//   LIVEKV_RETURN_IF_ERROR(channel->Fetch(blocks, &bytes));   // channel->name(): "shm", "ucx" or "grpc"
//
// A forced channel ("shm", "ucx", "grpc") is that channel or UNAVAILABLE naming why it cannot be opened (still
// wrapped in a gRPC fallback for the failures that come later).
#ifndef LIVEKV_SERVICES_CHANNELS_CHANNEL_FACTORY_H_
#define LIVEKV_SERVICES_CHANNELS_CHANNEL_FACTORY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/channels/kv_channel.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {

struct ChannelPreference {
  std::string force;                               // "" (the fastest available), "shm", "ucx" or "grpc"
  absl::Duration ucx_timeout = absl::Seconds(10);  // UcxKvChannel::Options::timeout
  // ShmKvChannel::Options::populate. Off: a worker's first channel would otherwise fill the page tables of the whole
  // arena (4 GiB by default: ~0.5 s in the demo's time to first token); untouched, each recalled page faults once.
  bool populate_mappings = false;
};

// Opens a channel for `session_id` under `lease` at index `version` (as GrpcKvChannel). `store` is borrowed and must
// outlive the channel. INVALID_ARGUMENT for an unknown `force`; UNAVAILABLE when a forced channel cannot be opened
// (naming why); the store's errors from OpenChannel (NOT_FOUND for an unknown session or lease, UNAVAILABLE when it
// is down). A store that predates OpenChannel (UNIMPLEMENTED) gets the gRPC channel.
absl::StatusOr<std::unique_ptr<KvChannel>> OpenKvChannel(KvStoreClient* store, const std::string& session_id,
                                                         const StoreLease& lease, int64_t version,
                                                         const ChannelPreference& preference = {});

}  // namespace livekv

#endif  // LIVEKV_SERVICES_CHANNELS_CHANNEL_FACTORY_H_
