// File: services/channels/channel_test_util.h
//
// Test and benchmark helpers for the KV channels:
//   TestStore      a KV store in this process behind a real gRPC server on 127.0.0.1:0, its pools in a ShmArena,
//                  with a data plane (shm and UCX);
//   pattern KV     rows whose every byte is a function of (session tag, layer, head, position, K or V), so a block
//                  fetched through any channel can be checked row by row: a stale row (another session's or
//                  another position's) or a torn one cannot pass;
//   SessionModel   a session filled with pattern rows, clustered and dropped at random, whose index is read back
//                  as BlockDestinations with the positions each block's rows hold.
#ifndef LIVEKV_SERVICES_CHANNELS_CHANNEL_TEST_UTIL_H_
#define LIVEKV_SERVICES_CHANNELS_CHANNEL_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "common/shm/shm_arena.h"
#include "proto/livekv/v1/kvstore.grpc.pb.h"
#include "services/channels/kv_channel.h"
#include "services/kvstore/cold_tier.h"
#include "services/kvstore/data_plane.h"
#include "services/kvstore/kvstore_client.h"
#include "services/kvstore/kvstore_service.h"
#include "services/kvstore/session_store.h"

namespace livekv::channel_testing {

struct TestStoreOptions {
  size_t pool_bytes = size_t{64} << 20;
  bool shm = true;
  bool ucx = true;
  ShmArena::Prefault prefault = ShmArena::Prefault::kSync;
  Clock* clock = nullptr;  // null: the real clock
  absl::Duration lease_ttl = absl::Seconds(30);
  ColdTier* cold_tier = nullptr;  // borrowed: SessionStore::Options::cold_tier
  absl::Duration cold_after = absl::InfiniteDuration();
};

class TestStore {
 public:
  static absl::StatusOr<std::unique_ptr<TestStore>> Start(const TestStoreOptions& options);
  ~TestStore();

  SessionStore& store() { return *store_; }
  KvStoreClient& client() { return *client_; }
  v1::KvStore::Stub& stub() { return *stub_; }
  DataPlane& data_plane() { return *data_plane_; }
  std::string address() const { return server_.address(); }
  ShmArena* arena() { return arena_.get(); }

 private:
  TestStore() = default;
  std::unique_ptr<ShmArena> arena_;
  std::unique_ptr<SessionStore> store_;
  std::unique_ptr<DataPlane> data_plane_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<KvStoreService> service_;
  GrpcServer server_;
  std::unique_ptr<KvStoreClient> client_;
  std::unique_ptr<v1::KvStore::Stub> stub_;
};

// One row (head_dim elements of the layout's dtype) of the pattern: finite values in [1, 2) whose low mantissa
// bits hash (tag, layer, head, position, channel, key).
std::string PatternRow(const PageLayout& layout, uint64_t tag, int32_t layer, int32_t head, int64_t position,
                       bool key);

// A session holding pattern rows, and what the test knows of its positional pages.
struct SessionModel {
  std::string id;
  uint64_t tag = 0;
  KvGeometry geometry;
  int64_t num_tokens = 0;
  int64_t first_positional = 0;  // positions before this are in the sink, clusters or dropped
};

KvGeometry SmallGeometry(int32_t layers, int32_t heads, int32_t head_dim, int32_t page_tokens, DType dtype,
                         int32_t sink_tokens);

absl::StatusOr<SessionModel> CreatePatternSession(KvStoreClient* store, const std::string& id, const KvGeometry& g,
                                                  uint64_t tag);
// Appends n pattern tokens, then (same commit) clusters the `cluster_pages` oldest complete positional pages of
// every head (a random partition into at most `clusters` clusters), then drops `drop_pages` more.
absl::Status AppendPattern(KvStoreClient* store, SessionModel* session, int64_t n, int32_t cluster_pages,
                           int32_t clusters, int32_t drop_pages, std::mt19937_64* rng);

// A block of a session's index, a buffer for its run, and the positions its rows held at the index's version.
struct IndexedBlock {
  int32_t layer = 0;
  int32_t kv_head = 0;
  BlockRef block;
  std::vector<int64_t> positions;  // rows [0, positions.size()) hold these
  bool may_grow = false;           // a sink or page: later rows may fill (with position first + row)
  std::vector<uint8_t> buffer;     // the run's size
  BlockDestination destination() {
    return BlockDestination{layer, kv_head, block, absl::MakeSpan(buffer)};
  }
};
struct SessionBlocks {
  int64_t version = 0;
  KvGeometry geometry;
  std::vector<IndexedBlock> blocks;  // every block, layer-major, in each head's order: sink, clusters, pages
};
// The session's whole index (GetIndex with positions) as blocks with zeroed buffers.
absl::StatusOr<SessionBlocks> ReadBlocks(v1::KvStore::Stub* stub, const std::string& session_id);

// "" when `bytes` (a fetched run of the block) holds exactly the pattern rows of its positions, and rows past them
// zero (or, for a sink or page, the next positions' pattern); otherwise what is wrong.
std::string CheckBlock(const PageLayout& layout, uint64_t tag, const IndexedBlock& block,
                       absl::Span<const uint8_t> bytes);

// OK when this process can create a UCX context (the client's, from the environment); otherwise why not. Tests
// that need UCX skip with that reason (and only then): a machine without a usable UCX transport.
absl::Status UcxUsable();

}  // namespace livekv::channel_testing

#endif  // LIVEKV_SERVICES_CHANNELS_CHANNEL_TEST_UTIL_H_
