// File: services/decode/remote_block_fetcher.h
//
// Recalls a session's blocks from the KV store into a local mirror the first time a layer attends them. The
// mirror was loaded index-only (KvStoreClient::LoadMirror without bytes): every block's pages are reserved in a
// lazily committed pool, so blocks never recalled cost no memory. Blocks that the decode worker itself appended
// (the prompt's and generated tokens, clusters made of them) are local and never recalled.
//
// Thread-safety: one Generate call, one thread.
#ifndef LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_
#define LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_

#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "kvcache/policy_kv_context.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {

class RemoteBlockFetcher : public BlockFetcher {
 public:
  // `mirror` is the freshly loaded mirror of `session_id` at `version`; it is borrowed and must outlive this.
  RemoteBlockFetcher(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version,
                     SequenceKv* mirror);

  // Recalls the sink and positional pages of every head now (before local tokens are appended into the last
  // page): all of them when `all_positional`, else just the last page of each head.
  absl::Status FetchEager(bool all_positional);

  absl::Status EnsureResident(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) override;

  int64_t recalled_bytes() const { return recalled_bytes_; }
  int64_t recalled_blocks() const { return recalled_blocks_; }
  double recall_seconds() const { return recall_seconds_; }

 private:
  using Key = std::tuple<int32_t, int32_t, int, int64_t>;  // layer, head, kind, cluster index or first position
  bool IsRemote(int32_t layer, int32_t head, const BlockRef& b) const;
  static Key KeyOf(int32_t layer, int32_t head, const BlockRef& b) {
    return {layer, head, static_cast<int>(b.kind), b.kind == BlockRef::Kind::kPage ? b.first_position : b.index};
  }
  absl::Status Fetch(const std::vector<KvStoreClient::BlockRequest>& requests);

  KvStoreClient* const store_;
  const std::string session_id_;
  const StoreLease lease_;
  const int64_t version_;
  SequenceKv* const mirror_;
  const int64_t remote_tokens_;
  std::vector<int32_t> remote_clusters_;  // [layer * kv_heads + head]
  absl::flat_hash_set<Key> resident_;
  int64_t recalled_bytes_ = 0;
  int64_t recalled_blocks_ = 0;
  double recall_seconds_ = 0;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_DECODE_REMOTE_BLOCK_FETCHER_H_
