// File: services/kvstore/session_store.h
//
// The KV store's state and rules, without gRPC: sessions (each a SequenceKv in a shared page pool), two-phase
// appends, leases, reads (index and block bytes), quotas and expiry. kvstore_service.h is its gRPC adapter.
//
//   FakeClock clock;
//   SessionStore store(SessionStore::Options{}, &clock);
//   NewSession ns;  ns.geometry = ...;
//   LIVEKV_ASSIGN_OR_RETURN(SessionInfo s, store.CreateSession(ns));
//   LIVEKV_ASSIGN_OR_RETURN(AppendTicket t, store.BeginAppend(s.session_id, 0, n, absl::ZeroDuration()));
//   store.StageRows(t.append_id, layer, 0, n, keys, values);   // every layer
//   store.StageClustering(t.append_id, clustering);            // optional maintenance
//   LIVEKV_ASSIGN_OR_RETURN(s, store.CommitAppend(t.append_id));
//
// Sessions. Named by a caller-chosen or random 16-hex-digit id ([A-Za-z0-9._-], at most 128 characters; ids and
// tenants are trimmed of surrounding whitespace). A session belongs to a tenant ("" means "default"), has a
// fixed geometry and policy (stored for the compute services; the store runs no policy), a version that grows by
// one with every commit, and expires after `ttl` without access (any call that names it is an access) unless a
// lease or an open append holds it.
//
// Pools. One PagePool per distinct page size, created on first use with capacity options.pool_bytes, its arena
// from the injected Allocator (a shared-memory arena later, so that workers can map it).
//
// Quotas per tenant: max_sessions_per_tenant sessions and max_bytes_per_tenant page bytes (a session's sink at
// creation, an append's pages and clusters at commit). RESOURCE_EXHAUSTED names the tenant, the limit and the
// value; so does a full pool.
//
// Atomic appends. BeginAppend opens the session's only append (a second writer is ABORTED, never interleaved).
// Rows, clusterings and drops are staged in the append, outside the session, and validated as they arrive;
// nothing touches the session's SequenceKv before CommitAppend. CommitAppend, under the session's lock:
//   1. checks the staging is complete (FAILED_PRECONDITION) and the maintenance valid against the pages the
//      session will have after the rows (INVALID_ARGUMENT), and the tenant's byte quota against the exact bytes
//      the session will hold afterwards (RESOURCE_EXHAUSTED) — all before any change;
//   2. appends every layer's rows; a full pool here is rolled back (SequenceKv::Rollback) — unchanged;
//   3. without clusterings: Commit and DropPages, which cannot fail once step 1 passed;
//      with clusterings: under the pool's exclusive allocation lock, first allocates and frees again the runs
//      ApplyClustering will need, in its order (append_plan.h TryClusterRuns); if they do not fit, Rollback —
//      unchanged; otherwise Commit, ApplyClustering and DropPages, which now cannot fail: their validation passed in
//      step 1 and, with no other allocation in the pool meanwhile, the pool places the runs exactly where the trial
//      did.
// So a session is either exactly as before or has the whole append. A failed commit leaves the append open (the
// writer may fix it and commit again, or abort); an aborted or expired append, or one whose session is deleted,
// drops its staging and never touched the session.
//
// Leases keep a session alive and unexpired. DeleteSession removes a session from every lookup at once (NOT_FOUND
// for new calls) but frees its pages only when its last lease is released or expires, and when in-flight reads
// finish (RecallReader holds the session).
//
// Expiry: ReapOnce() removes expired sessions, leases and appends at clock->Now(); StartReaper runs it
// periodically on a thread. Expired objects are also treated as absent by lookups before the reaper runs.
//
// Pins and generations (the shared-memory and UCX channels, services/channels/). A lease holder may read block
// bytes straight out of the pools' arenas, without the store copying them: ResolveBlocks tells it where each
// block's page run lies (pool, first page, pages, tokens) and the run's generation, and *pins* the run for the
// lease: a PagePool::Lookup handle kept in the lease entry (the sink, which has no key of its own, is pinned by the
// lease's reference to the session, which owns it for its whole life). A pinned run is never freed or reused, and
// its token rows are never rewritten (appends only fill rows past a page's committed count, which readers zero
// like Recall does), so a reader holding a live lease copies exactly the resolved content. Pins are released when
// the lease ends: ReleaseLease, expiry (ReapOnce or a lookup that finds it expired), or the store's destruction;
// DeleteSession leaves leases (and so pins) alone, as before.
// The lease cannot stop a reader that keeps copying after it ended, so every pool also has a generation table
// (common/shm/generation_table.h: one uint64 per page, in memory from the same allocator, so a shared-memory
// segment of its own with a ShmArena). When the last lease that pinned a run ends, every page of the run gets its
// generation incremented, under the store's lock and before the pin is released; only then can the pool free the
// run, and the next owner writes its pages only after taking the pool's mutex that the release went through — so
// the increment happens-before any rewrite. A reader compares the run's generation after its copy (acquire fence
// between) with the resolved one: equal means no rewrite touched what it read; different means the bytes may be
// stale or torn, and it must discard them (ABORTED). Pins alone make the bytes safe while the lease lives;
// generations alone could not stop a rewrite mid-copy but detect it; together: a reader never returns stale or
// torn bytes, whether its lease is alive (pins) or not (generations). Incrementing only when the last pin goes
// (not on every allocation) keeps the pools' allocation paths untouched and costs one atomic per page per lease.
//
// Tiers and prefetch (options.cold_tier, services/kvstore/cold_tier.h). The pool arena is the hot tier. The reaper
// demotes the cluster runs of a session idle for options.cold_after (no lease, no open append, no Recall in
// flight, no pinned run) to the cold tier, under the session's exclusive lock and after incrementing their
// generations; the runs keep their pool pages, which now read as zeros. Every path that reads run bytes first
// promotes what it needs under the session's lock: Recall and ResolveBlocks the blocks they resolve (a demand
// promotion: a prefetch miss), a commit every cold run of the session. Prefetch promotes ahead of requests, on a
// thread of its own: when a lease is acquired (a new question), the clusters of the session's last
// options.prefetch_history requests (its recent selections) are promoted; a later request that finds them hot
// counts a prefetch hit.
//
// Thread-safety: thread-safe. Lock order: an append's lock, then a session's lock, then the store's lock, then a
// pool's allocation lock (then the pool's own). Reads take only the session's lock (shared); the store's lock is
// held for map lookups only, never while copying KV bytes.
#ifndef LIVEKV_SERVICES_KVSTORE_SESSION_STORE_H_
#define LIVEKV_SERVICES_KVSTORE_SESSION_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/allocator.h"
#include "common/clock.h"
#include "kvcache/policy.h"
#include "kvcache/policy_options.h"
#include "kvcache/sequence_kv.h"
#include "services/kvstore/cold_tier.h"

namespace livekv {

// A request to create a session.
struct NewSession {
  std::string tenant;      // "" is "default"
  std::string session_id;  // "" assigns a random id
  std::string model;
  KvGeometry geometry;
  PolicyOptions policy;
  absl::Duration ttl = absl::ZeroDuration();  // zero: the store's default
};

// A session as callers see it.
struct SessionInfo {
  std::string session_id;
  std::string tenant;
  std::string model;
  KvGeometry geometry;
  PolicyOptions policy;
  int64_t num_tokens = 0;  // committed
  int64_t version = 0;     // commits so far
  int64_t bytes = 0;       // pool bytes held
  absl::Time created;
  absl::Time expires = absl::InfiniteFuture();  // if not accessed meanwhile
  bool append_open = false;
};

struct AppendTicket {
  std::string append_id;
  absl::Time deadline;
};

struct LeaseInfo {
  std::string lease_id;
  std::string session_id;
  std::string holder;
  absl::Time expires;
};

// The index of one (layer, KV head), as GetIndex returns it (kvstore.proto HeadIndex).
struct HeadIndexData {
  int32_t layer = 0;
  int32_t kv_head = 0;
  int32_t sink_count = 0;
  std::vector<int32_t> cluster_sizes;
  std::vector<float> centroids;          // [clusters][head_dim]
  std::vector<int32_t> cluster_positions;  // concatenated, when asked for
  std::vector<int64_t> page_first_positions;
  std::vector<int32_t> page_counts;
  std::vector<float> page_hi, page_lo;   // [complete pages][head_dim]
};

struct SessionIndex {
  int64_t version = 0;
  int64_t num_tokens = 0;
  KvGeometry geometry;
  std::vector<HeadIndexData> heads;  // layer-major
};

// Where a block's bytes lie in the store's pools (ResolveBlocks), for channels that read them directly.
struct BlockLocation {
  uint32_t pool_id = 0;
  uint32_t first_page = 0;  // pool page index: the run starts at arena + first_page * page_bytes
  uint32_t num_pages = 0;   // exactly SequenceKv::BlockBytes' pages for the block
  int64_t tokens = 0;       // rows holding tokens when resolved; readers zero the rest of the run, as Recall does
  uint64_t generation = 0;  // of the run's first page, when resolved (see "Pins and generations")
};

// A pool's memory as a channel sees it.
struct PoolView {
  uint32_t pool_id = 0;
  size_t page_bytes = 0;
  uint32_t num_pages = 0;
  uint8_t* arena = nullptr;         // num_pages * page_bytes bytes from the store's allocator
  uint64_t* generations = nullptr;  // num_pages words, in a region of generation_region_bytes from the allocator
  size_t generation_region_bytes = 0;
};

// Blocks of one (layer, KV head) to recall, in response order.
struct BlockList {
  int32_t layer = 0;
  int32_t kv_head = 0;
  std::vector<BlockRef> blocks;
};

struct StoreStats {
  int64_t sessions = 0;
  int64_t leases = 0;
  int64_t open_appends = 0;
  int64_t pool_capacity_bytes = 0;  // summed over pools
  int64_t pool_used_bytes = 0;
  int64_t recall_bytes = 0;
  int64_t expired_sessions = 0;
  int64_t expired_leases = 0;
  int64_t aborted_appends = 0;
  int64_t committed_appends = 0;
  int64_t pinned_runs = 0;   // distinct page runs pinned by leases (ResolveBlocks)
  int64_t pinned_bytes = 0;  // their bytes
  int64_t resolved_blocks = 0;  // by ResolveBlocks since start
  // Tiers and prefetch. A hit is a cold run that prefetch promoted before a request asked for it; a miss is one
  // that a request found cold (promoted on demand). Runs that never went cold count as neither.
  int64_t cold_runs = 0;
  int64_t cold_bytes = 0;
  int64_t demoted_runs = 0;
  int64_t prefetched_runs = 0;
  int64_t prefetch_hits = 0;
  int64_t prefetch_misses = 0;
};

class RecallReader;

class SessionStore {
 public:
  struct Options {
    size_t pool_bytes = size_t{4} << 30;                     // per page size
    absl::Duration default_ttl = absl::Hours(1);           // InfiniteDuration: sessions never expire
    int64_t max_sessions_per_tenant = 1000;                // 0: no limit
    int64_t max_bytes_per_tenant = 0;                      // 0: no limit
    absl::Duration default_lease_ttl = absl::Seconds(30);
    absl::Duration default_append_timeout = absl::Seconds(60);
    // Tiers and prefetch (see the file comment). Borrowed; null: every run stays in the arena.
    ColdTier* cold_tier = nullptr;
    absl::Duration cold_after = absl::InfiniteDuration();  // idle time before a session's clusters go cold
    int32_t prefetch_history = 4;                          // requests remembered per session for prediction
  };

  // `clock` and `allocator` are borrowed and must outlive the store; a null allocator means an owned
  // HostAllocator. `random` produces ids (nullptr: a seeded absl::BitGen).
  SessionStore(const Options& options, Clock* clock, Allocator* allocator = nullptr,
               std::function<uint64_t()> random = nullptr);
  ~SessionStore();  // stops the reaper; REQUIRES: no RecallReader outlives the store
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // INVALID_ARGUMENT for a bad id, tenant, model name, geometry, policy or ttl; ALREADY_EXISTS for a live id;
  // RESOURCE_EXHAUSTED for a quota or a full pool.
  absl::StatusOr<SessionInfo> CreateSession(const NewSession& request);
  // NOT_FOUND for unknown (or deleted, or expired) sessions. Refreshes the TTL.
  absl::StatusOr<SessionInfo> GetSession(const std::string& session_id);
  // Sessions of `tenant` ("" for every tenant), by id.
  std::vector<SessionInfo> ListSessions(const std::string& tenant);
  // Removes the session from lookups at once; aborts its open append. NOT_FOUND for unknown sessions.
  absl::Status DeleteSession(const std::string& session_id);

  // Opens an append of num_tokens tokens on top of expected_tokens committed ones; `timeout` zero means the
  // default. ABORTED when expected_tokens != the session's num_tokens or another append is open;
  // INVALID_ARGUMENT for negative counts or timeout, or positions past 2^31 - 1; RESOURCE_EXHAUSTED when the
  // rows alone exceed the tenant's byte quota or the pool.
  absl::StatusOr<AppendTicket> BeginAppend(const std::string& session_id, int64_t expected_tokens,
                                           int64_t num_tokens, absl::Duration timeout);
  // Stages rows [row_offset, row_offset + rows) of `layer`: keys and values token-major
  // ([rows][num_kv_heads][head_dim] of the session's dtype). Returns the rows staged so far, summed over layers.
  // NOT_FOUND for an unknown append; DEADLINE_EXCEEDED (and the append is aborted) past its deadline;
  // INVALID_ARGUMENT naming the field: layer out of range, rows <= 0, row_offset not the rows staged so far for the
  // layer, more than num_tokens rows for the layer, keys or values of the wrong byte length.
  absl::StatusOr<int64_t> StageRows(const std::string& append_id, int32_t layer, int64_t row_offset, int64_t rows,
                                    std::string keys, std::string values);
  // Stages a clustering to apply after the rows; validated against the pages the session will have after the
  // append (append_plan.h). INVALID_ARGUMENT naming the field; a (layer, head) clustered twice, or heads of one
  // layer over different page counts, are rejected here; a layer missing heads at commit.
  absl::StatusOr<int64_t> StageClustering(const std::string& append_id, HeadClustering clustering);
  // Stages dropping the oldest `pages` positional pages of every head after the rows and clusterings (added up
  // over calls). INVALID_ARGUMENT for pages <= 0.
  absl::StatusOr<int64_t> StageDropPages(const std::string& append_id, int32_t pages);
  // See "Atomic appends" above. NOT_FOUND for an unknown append or a session deleted meanwhile; DEADLINE_EXCEEDED
  // (aborted) past the deadline; FAILED_PRECONDITION when a layer lacks rows; INVALID_ARGUMENT for maintenance
  // that does not fit; RESOURCE_EXHAUSTED for quota or pool.
  absl::StatusOr<SessionInfo> CommitAppend(const std::string& append_id);
  // Drops the staging. NOT_FOUND for an unknown (or already finished) append.
  absl::Status AbortAppend(const std::string& append_id);

  // NOT_FOUND for unknown sessions; INVALID_ARGUMENT for ttl < 0. Zero ttl: the default lease TTL.
  absl::StatusOr<LeaseInfo> AcquireLease(const std::string& session_id, absl::Duration ttl, const std::string& holder);
  // NOT_FOUND for an unknown or expired lease, or when its session was deleted (the lease still pins the pages
  // until released).
  absl::StatusOr<LeaseInfo> RenewLease(const std::string& lease_id, absl::Duration ttl);
  absl::Status ReleaseLease(const std::string& lease_id);

  // The index of `layers` (empty: all), layer-major, every KV head. INVALID_ARGUMENT for a layer out of range or
  // repeated.
  absl::StatusOr<SessionIndex> GetIndex(const std::string& session_id, const std::vector<int32_t>& layers,
                                        bool with_positions);
  // Starts reading the bytes of `blocks`. `lease_id` must name a live lease of the session (INVALID_ARGUMENT when
  // empty, NOT_FOUND when unknown, FAILED_PRECONDITION when it is another session's). `version` (0: unchecked) is
  // the index version the blocks were chosen from: a page missing from a session whose version differs is ABORTED
  // ("session changed, reload the index"); a page missing at that very version is INVALID_ARGUMENT; with version 0
  // NOT_FOUND. Unknown clusters (cluster indices never change) and blocks outside the geometry are
  // INVALID_ARGUMENT.
  absl::StatusOr<std::unique_ptr<RecallReader>> StartRecall(const std::string& session_id,
                                                            const std::string& lease_id, int64_t version,
                                                            const std::vector<BlockList>& blocks);

  // The pool holding `session_id`'s pages, for a holder of `lease_id` opening a channel. Lease checks as
  // StartRecall.
  absl::StatusOr<PoolView> SessionPool(const std::string& session_id, const std::string& lease_id);
  // Every pool created so far, by id.
  std::vector<PoolView> Pools() const;
  // Where `blocks` lie, one location per block in request order, each run pinned for the lease (see "Pins and
  // generations"). Checks and codes as StartRecall; NOT_FOUND also when the lease ends during the call.
  absl::StatusOr<std::vector<BlockLocation>> ResolveBlocks(const std::string& session_id, const std::string& lease_id,
                                                           int64_t version, const std::vector<BlockList>& blocks);

  StoreStats Stats() const;

  // Removes what has expired at clock->Now(): leases, then appends past their deadline (an append being
  // committed is left to its commit), then sessions without leases or an open append.
  void ReapOnce();
  // Runs ReapOnce every `interval` on a thread until StopReaper (or destruction).
  void StartReaper(absl::Duration interval);
  void StopReaper();

  const Options& options() const { return options_; }

 private:
  friend class RecallReader;
  struct PoolSlot;
  struct StoredSession;
  struct SessionEntry;
  struct LeaseEntry;
  struct PendingAppend;
  struct LeasePin;
  struct ResolvedBlock;
  struct TenantUsage {
    int64_t sessions = 0;
    int64_t bytes = 0;
  };
  // Objects whose last reference may drop inside a critical section (sessions, lease pins) are moved here and
  // destroyed after it.
  struct Graveyard;

  absl::StatusOr<PoolSlot*> PoolFor(size_t page_bytes) ABSL_LOCKS_EXCLUDED(mu_);
  std::string NewIdLocked(const char* prefix) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The live entry for `session_id` (trimmed); an expired one is removed into `graveyard`. Refreshes the TTL.
  absl::StatusOr<SessionEntry*> FindSessionLocked(const std::string& session_id, absl::Time now,
                                                  Graveyard* graveyard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<LeaseEntry*> FindLeaseLocked(const std::string& lease_id, absl::Time now, Graveyard* graveyard)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSessionLocked(const std::string& id, Graveyard* graveyard, std::shared_ptr<PendingAppend>* open_append)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveLeaseLocked(const std::string& lease_id, Graveyard* graveyard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo InfoLocked(const SessionEntry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The live session `session_id` and lease `lease_id` of it (StartRecall's checks); returns the session.
  absl::StatusOr<std::shared_ptr<StoredSession>> FindLeasedSession(const std::string& session_id,
                                                                   const std::string& lease_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Checks `blocks` against the session (StartRecall's rules) and finds each one's run. REQUIRES: s.mu held.
  absl::Status ResolveLocked(const StoredSession& s, int64_t version, const std::vector<BlockList>& blocks,
                             std::vector<ResolvedBlock>* out) const;
  // Promotes the cold cluster runs among `blocks` (counting hits and misses) and remembers them as the session's
  // latest selection. REQUIRES: s.mu held (shared suffices).
  absl::Status PromoteDemanded(StoredSession& s, const std::vector<ResolvedBlock>& blocks);
  // Promotes every cold cluster run of `s`. REQUIRES: s.mu held.
  absl::Status PromoteAll(StoredSession& s);
  // Demotes the cluster runs of the idle session `s` if it is still idle once its lock is held.
  void DemoteIfIdle(const std::shared_ptr<StoredSession>& s) ABSL_LOCKS_EXCLUDED(mu_);
  void SchedulePrefetch(const std::shared_ptr<StoredSession>& s);
  void PrefetchLoop();
  void PrefetchSession(StoredSession& s);
  absl::StatusOr<std::shared_ptr<PendingAppend>> FindAppend(const std::string& append_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends an open append without committing: drops the staging, unlists it. REQUIRES: a->mu held, a open.
  void AbortLocked(PendingAppend* a, const char* why) ABSL_LOCKS_EXCLUDED(mu_);
  // Shared checks of the staging calls: the append is open and within its deadline (else aborts it).
  absl::Status CheckOpenLocked(PendingAppend* a);
  // Steps 2 and 3 of "Atomic appends". REQUIRES: a->mu and the session's lock held.
  absl::Status ApplyAppend(StoredSession* s, PendingAppend* a, bool* changed);

  const Options options_;
  Clock* const clock_;
  std::unique_ptr<Allocator> owned_allocator_;
  Allocator* const allocator_;
  std::atomic<int64_t> recall_bytes_{0};

  mutable absl::Mutex mu_;
  std::function<uint64_t()> random_ ABSL_GUARDED_BY(mu_);
  // Pools by page size; never removed before the store dies (sessions point at them).
  std::map<size_t, std::unique_ptr<PoolSlot>> pools_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<SessionEntry>> sessions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<LeaseEntry>> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<PendingAppend>> appends_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, TenantUsage> tenants_ ABSL_GUARDED_BY(mu_);
  int64_t expired_sessions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t expired_leases_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t aborted_appends_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t committed_appends_ ABSL_GUARDED_BY(mu_) = 0;
  // Leases pinning each page run, by RunKey(pool, first page); a run's generations are incremented when its count
  // drops to zero ("Pins and generations").
  absl::flat_hash_map<uint64_t, int32_t> run_pins_ ABSL_GUARDED_BY(mu_);
  int64_t pinned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t resolved_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t next_pool_id_ ABSL_GUARDED_BY(mu_) = 1;

  // Prefetch: sessions to promote ahead of requests, served by prefetch_thread_ (running when options.cold_tier).
  mutable absl::Mutex prefetch_mu_;  // a leaf: taken under the store's or a session's lock, nothing under it
  std::deque<std::weak_ptr<StoredSession>> prefetch_queue_ ABSL_GUARDED_BY(prefetch_mu_);
  bool prefetch_stop_ ABSL_GUARDED_BY(prefetch_mu_) = false;
  absl::flat_hash_set<ColdTier::RunKey> prefetched_ ABSL_GUARDED_BY(prefetch_mu_);  // promoted, not yet asked for
  int64_t prefetched_runs_ ABSL_GUARDED_BY(prefetch_mu_) = 0;
  int64_t prefetch_hits_ ABSL_GUARDED_BY(prefetch_mu_) = 0;
  int64_t prefetch_misses_ ABSL_GUARDED_BY(prefetch_mu_) = 0;
  std::thread prefetch_thread_;

  absl::Mutex reaper_mu_;
  bool reaper_stop_ ABSL_GUARDED_BY(reaper_mu_) = false;
  std::thread reaper_;
};

// The bytes of a Recall: the page runs of the requested blocks (SequenceKv::BlockBytes), concatenated in request
// order, read piece by piece under the session's shared lock. Rows past a block's tokens (the unused tail of a
// partial page, or of a sink not yet full) read as zero: pages may hold a previous owner's bytes.
// A block that disappears while the recall runs (clustered or dropped by a commit) ends it with ABORTED.
// Thread-safety: one reader per thread. Holds its session alive; the store must outlive it.
class RecallReader {
 public:
  ~RecallReader();
  int64_t total_bytes() const { return total_bytes_; }
  int64_t offset() const { return offset_; }
  bool done() const { return offset_ == total_bytes_; }

  // Replaces *out by the next min(max_bytes, total_bytes() - offset()) bytes.
  absl::Status Next(size_t max_bytes, std::string* out);

 private:
  friend class SessionStore;
  struct Block;
  RecallReader();

  SessionStore* store_ = nullptr;
  std::shared_ptr<SessionStore::StoredSession> session_;
  std::vector<Block> blocks_;
  size_t cursor_ = 0;            // first block not yet fully read
  int64_t cursor_offset_ = 0;    // bytes of blocks_[cursor_] already read
  int64_t total_bytes_ = 0;
  int64_t offset_ = 0;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_SESSION_STORE_H_
