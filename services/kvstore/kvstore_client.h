// File: services/kvstore/kvstore_client.h
//
// The typed client of the KV store, for the prefill and decode services: domain types in, domain types out, every
// call with a deadline (the constructor's timeout), gRPC errors converted with FromGrpcStatus. UNAVAILABLE is not
// retried here; callers decide (common/rpc/client.h RetryOnUnavailable).
//
//   KvStoreClient store(MakeChannel("127.0.0.1:7101"));
//   LIVEKV_ASSIGN_OR_RETURN(v1::Session s, store.CreateSession(request));
//   LIVEKV_ASSIGN_OR_RETURN(s, store.Append(s.session_id(), s.num_tokens(), n, keys, values, maintenance));
//   LIVEKV_ASSIGN_OR_RETURN(StoreLease lease, store.AcquireLease(s.session_id(), absl::Seconds(30), "decode-0"));
//   LIVEKV_ASSIGN_OR_RETURN(KvStoreClient::Mirror m, store.LoadMirror(s.session_id(), lease, &pool, false));
//   LIVEKV_RETURN_IF_ERROR(store.Recall(s.session_id(), lease, m.version, requests, m.kv.get(), &bytes));
//
// Thread-safety: thread-safe (a gRPC stub is); concurrent calls may share one client.
#ifndef LIVEKV_SERVICES_KVSTORE_KVSTORE_CLIENT_H_
#define LIVEKV_SERVICES_KVSTORE_KVSTORE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvcache/page_pool.h"
#include "kvcache/policy.h"
#include "kvcache/sequence_kv.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"

namespace livekv {

struct StoreLease {
  std::string lease_id;
  std::string session_id;
};

class KvStoreClient {
 public:
  // `timeout` bounds every call (for Append and LoadMirror, every RPC they make).
  KvStoreClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout = absl::Seconds(30));

  absl::StatusOr<v1::Session> CreateSession(const v1::CreateSessionRequest& request);
  absl::StatusOr<v1::Session> GetSession(const std::string& session_id);
  absl::Status DeleteSession(const std::string& session_id);

  absl::StatusOr<StoreLease> AcquireLease(const std::string& session_id, absl::Duration ttl, const std::string& holder);
  absl::Status ReleaseLease(const StoreLease& lease);
  absl::Status RenewLease(const StoreLease& lease, absl::Duration ttl);

  // The session's index as a new SequenceKv in `pool` (geometry from the session): every block imported in order
  // (sink, clusters with positions and centroids, positional pages with bounds), FinishImport(num_tokens). With
  // with_bytes, every block's bytes are recalled (one Recall); otherwise blocks are reserved unfilled.
  // The index comes in one GetIndex, or one per layer when the whole index exceeds a message (then ABORTED if
  // the session changed between them; retry). REQUIRES: pool->page_bytes() is the session's page size.
  // UNIMPLEMENTED for a session whose pages were dropped (streaming): SequenceKv cannot yet import a sequence
  // that holds fewer tokens than it has seen.
  struct Mirror {
    std::unique_ptr<SequenceKv> kv;
    int64_t version = 0;
    KvGeometry geometry;
  };
  absl::StatusOr<Mirror> LoadMirror(const std::string& session_id, const StoreLease& lease, PagePool* pool,
                                    bool with_bytes);

  // Recalls the bytes of `blocks` of (layer, kv_head) pairs into the mirror's pages (SequenceKv::BlockBytes of the
  // mirror), in one Recall call. `bytes_out` (may be null) receives the payload size. ABORTED when the session
  // changed since `version` and a block is gone (reload the mirror). On any error the blocks' pages in the mirror
  // may be partly overwritten and must not be used.
  struct BlockRequest {
    int32_t layer;
    int32_t kv_head;
    std::vector<BlockRef> blocks;
  };
  absl::Status Recall(const std::string& session_id, const StoreLease& lease, int64_t version,
                      const std::vector<BlockRequest>& requests, SequenceKv* mirror, int64_t* bytes_out);
  // The same into explicit destinations: one span per block, in request order, each exactly the block's run
  // (SequenceKv::BlockBytes of a mirror of this session). For fetching on another thread than the mirror's owner.
  absl::Status RecallInto(const std::string& session_id, const StoreLease& lease, int64_t version,
                          const std::vector<BlockRequest>& requests,
                          const std::vector<absl::Span<uint8_t>>& destinations, int64_t* bytes_out);

  // Two-phase append of n tokens: keys[layer]/values[layer] hold n token-major rows ([n][kv_heads][head_dim] of
  // the session dtype, raw bytes), then the maintenance to apply after them; commit. Sends rows in messages of at
  // most ~4 MiB. On any failure the append is aborted (best effort) and the error returned. With n == 0, keys and
  // values may be empty (a maintenance-only commit).
  absl::StatusOr<v1::Session> Append(const std::string& session_id, int64_t expected_tokens, int64_t n,
                                     const std::vector<std::string>& keys, const std::vector<std::string>& values,
                                     const Maintenance& maintenance);

  absl::StatusOr<v1::StatsResponse> Stats();

  // The data plane (services/channels/): what the store offers for reading the session's pool memory directly
  // (KvStore.OpenChannel; `want` empty: every kind), and where blocks lie, pinned for the lease
  // (KvStore.ResolveBlocks; one location per block of `requests`, in order).
  absl::StatusOr<v1::OpenChannelResponse> OpenChannel(const std::string& session_id, const StoreLease& lease,
                                                      const std::vector<v1::ChannelKind>& want);
  absl::StatusOr<v1::ResolveBlocksResponse> ResolveBlocks(const std::string& session_id, const StoreLease& lease,
                                                          int64_t version, const std::vector<BlockRequest>& requests);

 private:
  absl::StatusOr<v1::Session> AppendStream(const v1::BeginAppendRequest& begin, int64_t n,
                                           const std::vector<std::string>& keys, const std::vector<std::string>& values,
                                           const Maintenance& maintenance);
  absl::StatusOr<v1::GetIndexResponse> GetIndex(const std::string& session_id, const std::vector<int32_t>& layers);

  std::unique_ptr<v1::KvStore::Stub> stub_;
  const absl::Duration timeout_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_KVSTORE_CLIENT_H_
