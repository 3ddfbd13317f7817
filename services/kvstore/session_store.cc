#include "services/kvstore/session_store.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/shm/generation_table.h"
#include "common/status_macros.h"
#include "services/kvstore/append_plan.h"

namespace livekv {

// ---------------------------------------------------------------------------------------------------------------
// Internal records.

struct SessionStore::PoolSlot {
  ~PoolSlot() {
    pool.reset();
    if (generations != nullptr) allocator->Free(generations, generation_region_bytes);
  }

  std::unique_ptr<PagePool> pool;
  // Taken shared by every allocation or free in the pool (appending rows, creating or destroying a session,
  // rollback, drops, releasing a lease's pins) and exclusively by the clustering step of a commit, from its trial
  // allocation of the runs to ApplyClustering (session_store.h, "Atomic appends"). Lock order: after the store's
  // lock.
  absl::Mutex alloc_mu;

  uint32_t id = 0;
  Allocator* allocator = nullptr;
  // One generation per page (common/shm/generation_table.h), incremented only under the store's lock.
  uint64_t* generations = nullptr;
  size_t generation_region_bytes = 0;
};

struct SessionStore::StoredSession {
  StoredSession(std::string tenant, std::string model, const KvGeometry& geometry, const PolicyOptions& policy,
                absl::Time created, absl::Duration ttl, PoolSlot* slot, std::unique_ptr<SequenceKv> kv)
      : tenant(std::move(tenant)), model(std::move(model)), geometry(geometry), policy(policy), created(created),
        ttl(ttl), slot(slot), kv(std::move(kv)) {}
  ~StoredSession() {
    if (cold_tier != nullptr && kv != nullptr) {
      for (int32_t l = 0; l < geometry.num_layers; ++l) {
        for (int32_t h = 0; h < geometry.num_kv_heads; ++h) {
          const HeadKv& head = kv->head(l, h);
          for (int32_t c = 0; c < head.num_clusters(); ++c) cold_tier->Forget({slot->id, head.cluster(c).key});
        }
      }
    }
    // Freeing pages is a pool mutation (see PoolSlot::alloc_mu).
    absl::ReaderMutexLock pool_lock(&slot->alloc_mu);
    kv.reset();
  }

  std::string id;  // set once, before the session is published in sessions_
  const std::string tenant;
  const std::string model;
  const KvGeometry geometry;
  const PolicyOptions policy;
  const absl::Time created;
  const absl::Duration ttl;  // InfiniteDuration: never expires
  PoolSlot* const slot;

  // The data lock: exclusive for commits, shared for reads.
  absl::Mutex mu;
  std::unique_ptr<SequenceKv> kv ABSL_GUARDED_BY(mu);
  int64_t version ABSL_GUARDED_BY(mu) = 0;

  ColdTier* cold_tier = nullptr;   // set once, before the session is published
  std::atomic<int32_t> readers{0};  // RecallReaders that may still copy (changed under mu, shared or not)
  // The clusters (layer, head, index) of the session's latest requests, oldest first ("Tiers and prefetch").
  absl::Mutex history_mu;
  std::deque<std::vector<std::tuple<int32_t, int32_t, int32_t>>> history ABSL_GUARDED_BY(history_mu);
};

// A live session's bookkeeping, guarded by the store's lock (a session's data is guarded by its own).
struct SessionStore::SessionEntry {
  std::shared_ptr<StoredSession> session;
  int64_t num_tokens = 0;
  int64_t version = 0;
  int64_t bytes = 0;  // pool bytes, including the reservation of a commit in progress
  absl::Time last_access;
  int64_t leases = 0;
  std::string append_id;  // the open append, or ""
  absl::Time demoted_at_access = absl::InfinitePast();  // last_access when its clusters were last demoted

  absl::Time Expires() const {
    return session->ttl == absl::InfiniteDuration() ? absl::InfiniteFuture() : last_access + session->ttl;
  }
  bool Expired(absl::Time now) const { return leases == 0 && append_id.empty() && now >= Expires(); }
};

// A page run pinned for a lease by ResolveBlocks.
struct SessionStore::LeasePin {
  PoolSlot* slot = nullptr;
  uint32_t first_page = 0;
  uint32_t num_pages = 0;
  PagePool::Handle handle;  // invalid for a sink: the lease's session reference pins it
};

struct SessionStore::LeaseEntry {
  std::string id;
  std::string session_id;
  std::string holder;
  std::shared_ptr<StoredSession> session;  // pins the pages, even after DeleteSession
  absl::Time expires;
  absl::flat_hash_map<uint64_t, LeasePin> pins;  // by RunKey
};

struct SessionStore::Graveyard {
  std::vector<std::shared_ptr<StoredSession>> sessions;
  std::vector<std::pair<PoolSlot*, PagePool::Handle>> pins;

  Graveyard() = default;
  Graveyard(const Graveyard&) = delete;
  Graveyard& operator=(const Graveyard&) = delete;
  ~Graveyard() { clear(); }
  void push_back(std::shared_ptr<StoredSession> s) { sessions.push_back(std::move(s)); }
  void clear() {
    // Releasing the last pin of an erased run frees it: a pool mutation (PoolSlot::alloc_mu).
    for (auto& [slot, handle] : pins) {
      absl::ReaderMutexLock pool_lock(&slot->alloc_mu);
      handle.Release();
    }
    pins.clear();
    sessions.clear();
  }
};

// A block checked against its session, and its run of pages.
struct SessionStore::ResolvedBlock {
  int32_t layer = 0;
  int32_t kv_head = 0;
  BlockRef ref;
  int64_t tokens = 0;
  absl::Span<uint8_t> run;
  PagePool::Key key = 0;  // the run's pool entry; 0 for a sink
};

struct SessionStore::PendingAppend {
  PendingAppend(std::string id, std::shared_ptr<StoredSession> session, int64_t expected_tokens,
                int64_t num_tokens, absl::Time deadline)
      : id(std::move(id)), session(std::move(session)), expected_tokens(expected_tokens), num_tokens(num_tokens),
        deadline(deadline), rows(this->session->geometry.num_layers),
        received(this->session->geometry.num_layers, 0) {}

  struct Rows {
    int64_t rows = 0;
    std::string keys, values;  // token-major, the session's dtype
  };

  const std::string id;
  const std::shared_ptr<StoredSession> session;
  const int64_t expected_tokens;
  const int64_t num_tokens;
  const absl::Time deadline;

  // Held for every staging call and for the whole commit.
  absl::Mutex mu;
  bool open ABSL_GUARDED_BY(mu) = true;
  std::vector<std::vector<Rows>> rows ABSL_GUARDED_BY(mu);  // per layer, in order
  std::vector<int64_t> received ABSL_GUARDED_BY(mu);        // per layer
  int64_t total_rows ABSL_GUARDED_BY(mu) = 0;
  Maintenance maintenance ABSL_GUARDED_BY(mu);
  std::set<std::pair<int32_t, int32_t>> clustered_heads ABSL_GUARDED_BY(mu);
  std::map<int32_t, int32_t> layer_pages ABSL_GUARDED_BY(mu);  // clustered layer -> num_pages

  void DropStaging() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    open = false;
    std::vector<std::vector<Rows>>().swap(rows);
    maintenance = Maintenance{};
  }
};

struct RecallReader::Block {
  int32_t layer = 0;
  int32_t kv_head = 0;
  BlockRef ref;
  int64_t bytes = 0;   // of the run
  int64_t tokens = 0;  // rows that hold tokens when the recall started; the rest read as zero
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers.

namespace {

constexpr size_t kMaxNameLength = 128;
constexpr size_t kMaxModelLength = 256;
constexpr size_t kMaxHolderLength = 256;

// Trims `value`, then checks it is a non-empty name of [A-Za-z0-9._-] of at most 128 characters.
absl::StatusOr<std::string> CheckName(absl::string_view field, absl::string_view value) {
  const absl::string_view v = absl::StripAsciiWhitespace(value);
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  if (v.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", v.size(), " characters long; at most ", kMaxNameLength, " are allowed"));
  }
  for (char c : v) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(field, " \"", absl::CHexEscape(v), "\" contains '",
                                                     absl::CHexEscape(absl::string_view(&c, 1)),
                                                     "'; only [A-Za-z0-9._-] are allowed"));
    }
  }
  return std::string(v);
}

// Makes a pool error say which pool, keeping its code.
absl::Status PoolError(const absl::Status& s, absl::string_view what) {
  if (s.code() == absl::StatusCode::kResourceExhausted) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool full: ", what, ": ", s.message()));
  }
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

uint64_t RunKey(uint32_t pool_id, uint32_t first_page) { return (uint64_t{pool_id} << 32) | first_page; }

int64_t SinkBytes(const KvGeometry& g) {
  if (g.sink_tokens <= 0) return 0;
  return int64_t{g.num_layers} * g.num_kv_heads * g.layout.PagesFor(g.sink_tokens) *
         static_cast<int64_t>(g.layout.page_bytes());
}

// Copies bytes [from, from + len) of a block's run of pages to dst, zeroing rows at or past `tokens` (each page
// holds rows [page * P, page * P + P) of the block, K rows then V rows).
void CopyBlockRange(const uint8_t* run, const PageLayout& L, int64_t tokens, int64_t from, int64_t len,
                    uint8_t* dst) {
  const int64_t page_bytes = static_cast<int64_t>(L.page_bytes());
  const int64_t half = int64_t{L.page_tokens} * static_cast<int64_t>(L.row_bytes());
  const int64_t end = from + len;
  for (int64_t pos = from; pos < end;) {
    const int64_t page = pos / page_bytes;
    const int64_t in_half = (pos % page_bytes) % half;
    const int64_t valid_rows = std::clamp<int64_t>(tokens - page * L.page_tokens, 0, L.page_tokens);
    const int64_t valid_bytes = valid_rows * static_cast<int64_t>(L.row_bytes());
    const bool valid = in_half < valid_bytes;
    const int64_t take = std::min(end - pos, (valid ? valid_bytes : half) - in_half);
    if (valid) {
      std::memcpy(dst + (pos - from), run + pos, take);
    } else {
      std::memset(dst + (pos - from), 0, take);
    }
    pos += take;
  }
}

// The page of `head` starting at `first_position`, or -1.
int32_t FindPage(const HeadKv& head, int64_t first_position) {
  int32_t lo = 0, hi = head.num_pages();
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (head.page(mid).first_position < first_position) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < head.num_pages() && head.page(lo).first_position == first_position ? lo : -1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Construction.

SessionStore::SessionStore(const Options& options, Clock* clock, Allocator* allocator,
                           std::function<uint64_t()> random)
    : options_(options),
      clock_(clock),
      owned_allocator_(allocator == nullptr ? std::make_unique<HostAllocator>() : nullptr),
      allocator_(allocator == nullptr ? owned_allocator_.get() : allocator) {
  if (random == nullptr) {
    auto gen = std::make_shared<absl::BitGen>();
    random = [gen] { return absl::Uniform<uint64_t>(*gen); };
  }
  absl::MutexLock lock(&mu_);
  random_ = std::move(random);
  if (options_.cold_tier != nullptr) prefetch_thread_ = std::thread([this] { PrefetchLoop(); });
}

SessionStore::~SessionStore() {
  StopReaper();
  if (prefetch_thread_.joinable()) {
    {
      absl::MutexLock lock(&prefetch_mu_);
      prefetch_stop_ = true;
    }
    prefetch_thread_.join();
  }
  // Sessions free their pages into the pools, so they go first, outside the store's lock.
  Graveyard graveyard;
  absl::flat_hash_map<std::string, std::shared_ptr<PendingAppend>> appends;
  {
    absl::MutexLock lock(&mu_);
    appends.swap(appends_);
    std::vector<std::string> lease_ids;
    for (const auto& [id, lease] : leases_) lease_ids.push_back(id);
    for (const std::string& id : lease_ids) RemoveLeaseLocked(id, &graveyard);  // bumps pinned runs' generations
    for (auto& [id, entry] : sessions_) graveyard.push_back(std::move(entry->session));
    sessions_.clear();
  }
  appends.clear();
  graveyard.clear();
}

absl::StatusOr<SessionStore::PoolSlot*> SessionStore::PoolFor(size_t page_bytes) {
  absl::MutexLock lock(&mu_);
  auto it = pools_.find(page_bytes);
  if (it != pools_.end()) return it->second.get();
  if (options_.pool_bytes < page_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool full: pages of ", page_bytes,
                                                     " bytes do not fit a pool of ", options_.pool_bytes, " bytes"));
  }
  PagePool::Options po;
  po.page_bytes = page_bytes;
  po.capacity_bytes = options_.pool_bytes;
  absl::StatusOr<std::unique_ptr<PagePool>> pool = PagePool::Create(allocator_, po);
  if (!pool.ok()) return PoolError(pool.status(), absl::StrCat("creating the pool of ", page_bytes, "-byte pages"));
  auto slot = std::make_unique<PoolSlot>();
  slot->pool = std::move(*pool);
  // The generation table comes from the same allocator, so a shared-memory store exports it as a segment of its
  // own. Fresh regions are zero (HostAllocator, new shm segments); the table starts at zero either way.
  const size_t table_bytes = GenerationTableBytes(slot->pool->num_pages());
  slot->generation_region_bytes = (table_bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
  absl::StatusOr<void*> table = allocator_->Allocate(slot->generation_region_bytes);
  if (!table.ok()) {
    return PoolError(table.status(), absl::StrCat("creating the generation table of the pool of ", page_bytes,
                                                  "-byte pages"));
  }
  slot->allocator = allocator_;
  slot->generations = static_cast<uint64_t*>(*table);
  std::memset(slot->generations, 0, table_bytes);
  slot->id = next_pool_id_++;
  PoolSlot* raw = slot.get();
  pools_.emplace(page_bytes, std::move(slot));
  return raw;
}

std::string SessionStore::NewIdLocked(const char* prefix) {
  return absl::StrCat(prefix, absl::StrFormat("%016x", random_()));
}

// ---------------------------------------------------------------------------------------------------------------
// Lookups.

absl::StatusOr<SessionStore::SessionEntry*> SessionStore::FindSessionLocked(const std::string& session_id,
                                                                           absl::Time now, Graveyard* graveyard) {
  const std::string id(absl::StripAsciiWhitespace(session_id));
  if (id.empty()) return absl::InvalidArgumentError("session_id is required");
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("session \"", absl::CHexEscape(id), "\" not found"));
  SessionEntry* entry = it->second.get();
  if (entry->Expired(now)) {
    ++expired_sessions_;
    RemoveSessionLocked(id, graveyard, nullptr);
    return absl::NotFoundError(absl::StrCat("session \"", id, "\" not found (it expired)"));
  }
  entry->last_access = now;
  return entry;
}

absl::StatusOr<SessionStore::LeaseEntry*> SessionStore::FindLeaseLocked(const std::string& lease_id, absl::Time now,
                                                                       Graveyard* graveyard) {
  if (lease_id.empty()) return absl::InvalidArgumentError("lease_id is required");
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("lease \"", absl::CHexEscape(lease_id), "\" not found"));
  }
  if (now >= it->second->expires) {
    ++expired_leases_;
    RemoveLeaseLocked(lease_id, graveyard);
    return absl::NotFoundError(absl::StrCat("lease \"", lease_id, "\" not found (it expired)"));
  }
  return it->second.get();
}

void SessionStore::RemoveSessionLocked(const std::string& id, Graveyard* graveyard,
                                       std::shared_ptr<PendingAppend>* open_append) {
  auto it = sessions_.find(id);
  CHECK(it != sessions_.end());
  SessionEntry& entry = *it->second;
  TenantUsage& usage = tenants_[entry.session->tenant];
  usage.sessions -= 1;
  usage.bytes -= entry.bytes;
  if (usage.sessions == 0 && usage.bytes == 0) tenants_.erase(entry.session->tenant);
  if (!entry.append_id.empty()) {
    CHECK(open_append != nullptr) << "removing session " << id << " with open append " << entry.append_id;
    auto a = appends_.find(entry.append_id);
    if (a != appends_.end()) {
      *open_append = std::move(a->second);
      appends_.erase(a);
    }
  }
  graveyard->push_back(std::move(entry.session));
  sessions_.erase(it);
}

void SessionStore::RemoveLeaseLocked(const std::string& lease_id, Graveyard* graveyard) {
  auto it = leases_.find(lease_id);
  CHECK(it != leases_.end());
  LeaseEntry& lease = *it->second;
  auto s = sessions_.find(lease.session_id);
  if (s != sessions_.end() && s->second->session == lease.session) s->second->leases -= 1;
  // "Pins and generations": the last lease pinning a run increments its generations before its pin goes.
  for (auto& [key, pin] : lease.pins) {
    auto count = run_pins_.find(key);
    CHECK(count != run_pins_.end()) << "lease " << lease_id << " pins run " << key << " without a count";
    if (--count->second == 0) {
      run_pins_.erase(count);
      pinned_bytes_ -= static_cast<int64_t>(pin.num_pages) * static_cast<int64_t>(pin.slot->pool->page_bytes());
      BumpGenerations(pin.slot->generations, pin.first_page, pin.num_pages);
    }
    if (pin.handle.valid()) graveyard->pins.emplace_back(pin.slot, std::move(pin.handle));
  }
  lease.pins.clear();
  graveyard->push_back(std::move(lease.session));
  leases_.erase(it);
}

SessionInfo SessionStore::InfoLocked(const SessionEntry& entry) const {
  const StoredSession& s = *entry.session;
  SessionInfo info;
  info.session_id = s.id;
  info.tenant = s.tenant;
  info.model = s.model;
  info.geometry = s.geometry;
  info.policy = s.policy;
  info.num_tokens = entry.num_tokens;
  info.version = entry.version;
  info.bytes = entry.bytes;
  info.created = s.created;
  info.expires = entry.Expires();
  info.append_open = !entry.append_id.empty();
  return info;
}

absl::StatusOr<std::shared_ptr<SessionStore::PendingAppend>> SessionStore::FindAppend(const std::string& append_id) {
  if (append_id.empty()) return absl::InvalidArgumentError("append_id is required");
  absl::MutexLock lock(&mu_);
  auto it = appends_.find(append_id);
  if (it == appends_.end()) {
    return absl::NotFoundError(absl::StrCat("append \"", absl::CHexEscape(append_id),
                                            "\" not found (never begun, or already committed or aborted)"));
  }
  return it->second;
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions.

absl::StatusOr<SessionInfo> SessionStore::CreateSession(const NewSession& request) {
  std::string tenant = "default";
  if (!absl::StripAsciiWhitespace(request.tenant).empty()) {
    LIVEKV_ASSIGN_OR_RETURN(tenant, CheckName("tenant", request.tenant));
  }
  std::string id;
  if (!request.session_id.empty()) {
    LIVEKV_ASSIGN_OR_RETURN(id, CheckName("session_id", request.session_id));
  }
  if (request.model.size() > kMaxModelLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("model name is ", request.model.size(), " characters long; at most ", kMaxModelLength));
  }
  const KvGeometry& g = request.geometry;
  if (absl::Status s = g.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("geometry: ", s.message()));
  }
  PolicyOptions policy = request.policy;
  policy.sink = g.sink_tokens;
  policy.page_tokens = g.layout.page_tokens;
  policy.kv_dtype = g.layout.dtype;
  if (absl::Status s = policy.Validate(g.num_layers); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("policy: ", s.message()));
  }
  if (request.ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("ttl must be >= 0, saw ", absl::FormatDuration(request.ttl)));
  }
  const absl::Duration ttl = request.ttl == absl::ZeroDuration() ? options_.default_ttl : request.ttl;
  const int64_t sink_bytes = SinkBytes(g);
  if (static_cast<size_t>(sink_bytes) > options_.pool_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool full: the session's sink pages need ", sink_bytes,
                                                     " bytes, the pool holds ", options_.pool_bytes));
  }

  LIVEKV_ASSIGN_OR_RETURN(PoolSlot * slot, PoolFor(g.layout.page_bytes()));
  std::shared_ptr<StoredSession> session;  // destroyed (after the lock below) when the session is not published
  {
    absl::ReaderMutexLock pool_lock(&slot->alloc_mu);
    absl::StatusOr<std::unique_ptr<SequenceKv>> kv = SequenceKv::Create(g, slot->pool.get());
    if (!kv.ok()) return PoolError(kv.status(), "allocating the session's sink pages");
    session = std::make_shared<StoredSession>(tenant, request.model, g, policy, clock_->Now(), ttl, slot,
                                              std::move(*kv));
    session->cold_tier = options_.cold_tier;
  }
  Graveyard graveyard;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  if (id.empty()) {
    do {
      id = NewIdLocked("");
    } while (sessions_.contains(id));
  } else if (sessions_.contains(id)) {
    if (FindSessionLocked(id, now, &graveyard).ok()) {  // an expired one is removed here
      return absl::AlreadyExistsError(absl::StrCat("session \"", id, "\" already exists"));
    }
  }
  auto usage = tenants_.find(tenant);
  const TenantUsage current = usage == tenants_.end() ? TenantUsage{} : usage->second;
  if (options_.max_sessions_per_tenant > 0 && current.sessions >= options_.max_sessions_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant \"", tenant, "\" has ", current.sessions,
                                                     " sessions; the limit max_sessions_per_tenant is ",
                                                     options_.max_sessions_per_tenant));
  }
  if (options_.max_bytes_per_tenant > 0 && current.bytes + sink_bytes > options_.max_bytes_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant \"", tenant, "\" holds ", current.bytes, " bytes; a new session's sink needs ", sink_bytes,
        " more, over the limit max_bytes_per_tenant ", options_.max_bytes_per_tenant));
  }
  session->id = id;
  auto entry = std::make_unique<SessionEntry>();
  entry->session = std::move(session);
  entry->bytes = sink_bytes;
  entry->last_access = now;
  TenantUsage& u = tenants_[tenant];
  u.sessions += 1;
  u.bytes += sink_bytes;
  SessionEntry* raw = entry.get();
  sessions_.emplace(id, std::move(entry));
  return InfoLocked(*raw);
}

absl::StatusOr<SessionInfo> SessionStore::GetSession(const std::string& session_id) {
  Graveyard graveyard;
  absl::MutexLock lock(&mu_);
  LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, clock_->Now(), &graveyard));
  return InfoLocked(*entry);
}

std::vector<SessionInfo> SessionStore::ListSessions(const std::string& tenant) {
  const std::string want(absl::StripAsciiWhitespace(tenant));
  std::vector<SessionInfo> out;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  for (const auto& [id, entry] : sessions_) {
    if (entry->Expired(now)) continue;  // the reaper removes it
    if (!want.empty() && entry->session->tenant != want) continue;
    out.push_back(InfoLocked(*entry));
  }
  std::sort(out.begin(), out.end(),
            [](const SessionInfo& a, const SessionInfo& b) { return a.session_id < b.session_id; });
  return out;
}

absl::Status SessionStore::DeleteSession(const std::string& session_id) {
  Graveyard graveyard;
  std::shared_ptr<PendingAppend> open_append;
  {
    absl::MutexLock lock(&mu_);
    LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, clock_->Now(), &graveyard));
    RemoveSessionLocked(entry->session->id, &graveyard, &open_append);
  }
  if (open_append != nullptr) {
    absl::MutexLock append_lock(&open_append->mu);
    if (open_append->open) AbortLocked(open_append.get(), "its session was deleted");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
// Appends.

absl::StatusOr<AppendTicket> SessionStore::BeginAppend(const std::string& session_id, int64_t expected_tokens,
                                                       int64_t num_tokens, absl::Duration timeout) {
  if (expected_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("expected_tokens must be >= 0, saw ", expected_tokens));
  }
  if (num_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("num_tokens must be >= 0, saw ", num_tokens));
  if (timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout must be >= 0, saw ", absl::FormatDuration(timeout)));
  }
  if (expected_tokens + num_tokens > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("num_tokens: ", expected_tokens, " + ", num_tokens,
                                                   " tokens exceed the 2^31 - 1 positions a session can hold"));
  }
  for (int attempt = 0;; ++attempt) {
    std::shared_ptr<PendingAppend> stale;
    {
      Graveyard graveyard;
      absl::MutexLock lock(&mu_);
      const absl::Time now = clock_->Now();
      LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, now, &graveyard));
      const StoredSession& s = *entry->session;
      if (!entry->append_id.empty()) {
        auto it = appends_.find(entry->append_id);
        if (attempt == 0 && it != appends_.end() && now >= it->second->deadline) {
          stale = it->second;  // expired but not reaped yet: abort it below and try again
        } else {
          return absl::AbortedError(absl::StrCat("session \"", s.id, "\" already has an open append (",
                                                 entry->append_id, "); one writer at a time"));
        }
      } else {
        if (expected_tokens != entry->num_tokens) {
          return absl::AbortedError(absl::StrCat("session \"", s.id, "\" has ", entry->num_tokens,
                                                 " tokens; the writer expected ", expected_tokens,
                                                 " (reload the session and retry)"));
        }
        // The rows alone need at least this many new pages per head: ceil((positional tokens - what the last
        // partial page may still take, at most page_tokens - 1) / page_tokens) = floor(positional / page_tokens).
        const int64_t P = s.geometry.layout.page_tokens;
        const int64_t positional =
            std::max<int64_t>(0, expected_tokens + num_tokens - std::max<int64_t>(expected_tokens, s.geometry.sink_tokens));
        const int64_t min_pages = positional / P;
        const int64_t min_bytes = min_pages * s.geometry.num_layers * s.geometry.num_kv_heads *
                                  static_cast<int64_t>(s.geometry.layout.page_bytes());
        if (static_cast<size_t>(min_bytes) > options_.pool_bytes) {
          return absl::ResourceExhaustedError(absl::StrCat("KV pool full: an append of ", num_tokens,
                                                           " tokens needs at least ", min_bytes,
                                                           " bytes; the pool holds ", options_.pool_bytes));
        }
        const TenantUsage& u = tenants_[s.tenant];
        if (options_.max_bytes_per_tenant > 0 && u.bytes + min_bytes > options_.max_bytes_per_tenant) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "tenant \"", s.tenant, "\" holds ", u.bytes, " bytes; an append of ", num_tokens,
              " tokens needs at least ", min_bytes, " more, over the limit max_bytes_per_tenant ",
              options_.max_bytes_per_tenant));
        }
        std::string id;
        do {
          id = NewIdLocked("append-");
        } while (appends_.contains(id));
        const absl::Time deadline = now + (timeout == absl::ZeroDuration() ? options_.default_append_timeout : timeout);
        appends_.emplace(id, std::make_shared<PendingAppend>(id, entry->session, expected_tokens, num_tokens,
                                                             deadline));
        entry->append_id = id;
        return AppendTicket{id, deadline};
      }
    }
    // A commit in progress holds the lock; then the append is not stale after all and the retry says ABORTED.
    if (stale->mu.TryLock()) {
      if (stale->open && clock_->Now() >= stale->deadline) AbortLocked(stale.get(), "its deadline passed");
      stale->mu.Unlock();
    }
  }
}

void SessionStore::AbortLocked(PendingAppend* a, const char* why) {
  a->DropStaging();
  VLOG(1) << "append " << a->id << " of session " << a->session->id << " aborted: " << why;
  absl::MutexLock lock(&mu_);
  auto it = appends_.find(a->id);
  if (it != appends_.end() && it->second.get() == a) appends_.erase(it);
  auto s = sessions_.find(a->session->id);
  if (s != sessions_.end() && s->second->session == a->session && s->second->append_id == a->id) {
    s->second->append_id.clear();
  }
  ++aborted_appends_;
}

absl::Status SessionStore::CheckOpenLocked(PendingAppend* a) {
  if (!a->open) return absl::NotFoundError(absl::StrCat("append \"", a->id, "\" was already committed or aborted"));
  const absl::Time now = clock_->Now();
  if (now >= a->deadline) {
    AbortLocked(a, "its deadline passed");
    return absl::DeadlineExceededError(absl::StrCat("append \"", a->id, "\" passed its deadline (",
                                                    absl::FormatTime(a->deadline), ") and was aborted"));
  }
  // Staging is an access to the session.
  absl::MutexLock lock(&mu_);
  auto s = sessions_.find(a->session->id);
  if (s != sessions_.end() && s->second->session == a->session) s->second->last_access = now;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SessionStore::StageRows(const std::string& append_id, int32_t layer, int64_t row_offset,
                                                int64_t rows, std::string keys, std::string values) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<PendingAppend> a, FindAppend(append_id));
  absl::MutexLock append_lock(&a->mu);
  LIVEKV_RETURN_IF_ERROR(CheckOpenLocked(a.get()));
  const KvGeometry& g = a->session->geometry;
  if (layer < 0 || layer >= g.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows.layer: ", layer, " is outside the session's layers [0, ", g.num_layers, ")"));
  }
  if (rows <= 0) return absl::InvalidArgumentError(absl::StrCat("rows.rows must be positive, saw ", rows));
  if (row_offset != a->received[layer]) {
    return absl::InvalidArgumentError(absl::StrCat("rows.row_offset: layer ", layer, " expects row ",
                                                   a->received[layer], " next, saw ", row_offset,
                                                   " (rows of a layer arrive in order)"));
  }
  if (a->received[layer] + rows > a->num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("rows.rows: layer ", layer, " would have ",
                                                   a->received[layer] + rows, " rows; the append has ",
                                                   a->num_tokens, " tokens"));
  }
  const int64_t want = rows * g.num_kv_heads * static_cast<int64_t>(g.layout.row_bytes());
  if (static_cast<int64_t>(keys.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat("rows.keys: ", keys.size(), " bytes for ", rows, " rows of layer ",
                                                   layer, "; expected ", want, " (rows x ", g.num_kv_heads,
                                                   " KV heads x ", g.layout.head_dim, " x ",
                                                   DTypeSize(g.layout.dtype), " bytes)"));
  }
  if (static_cast<int64_t>(values.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat("rows.values: ", values.size(), " bytes for ", rows,
                                                   " rows of layer ", layer, "; expected ", want));
  }
  a->rows[layer].push_back({rows, std::move(keys), std::move(values)});
  a->received[layer] += rows;
  a->total_rows += rows;
  return a->total_rows;
}

absl::StatusOr<int64_t> SessionStore::StageClustering(const std::string& append_id, HeadClustering clustering) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<PendingAppend> a, FindAppend(append_id));
  absl::MutexLock append_lock(&a->mu);
  LIVEKV_RETURN_IF_ERROR(CheckOpenLocked(a.get()));
  const HeadClustering& c = clustering;
  {
    // The session cannot change while its append is open; reading it needs only the shared lock.
    StoredSession& s = *a->session;
    absl::ReaderMutexLock session_lock(&s.mu);
    LIVEKV_RETURN_IF_ERROR(ValidateClusteringAfterAppend(*s.kv, a->num_tokens, c));
  }
  if (a->clustered_heads.count({c.layer, c.kv_head})) {
    return absl::InvalidArgumentError(absl::StrCat("clustering: layer ", c.layer, " head ", c.kv_head,
                                                   " is clustered twice in one append"));
  }
  auto pages = a->layer_pages.find(c.layer);
  if (pages != a->layer_pages.end() && pages->second != c.num_pages) {
    return absl::InvalidArgumentError(absl::StrCat("clustering.num_pages: layer ", c.layer, " head ", c.kv_head,
                                                   " clusters ", c.num_pages, " pages, its other heads ",
                                                   pages->second, " (heads of a layer are clustered alike)"));
  }
  a->clustered_heads.insert({c.layer, c.kv_head});
  a->layer_pages[c.layer] = c.num_pages;
  a->maintenance.clusterings.push_back(std::move(clustering));
  return a->total_rows;
}

absl::StatusOr<int64_t> SessionStore::StageDropPages(const std::string& append_id, int32_t pages) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<PendingAppend> a, FindAppend(append_id));
  absl::MutexLock append_lock(&a->mu);
  LIVEKV_RETURN_IF_ERROR(CheckOpenLocked(a.get()));
  if (pages <= 0) return absl::InvalidArgumentError(absl::StrCat("drop_pages must be positive, saw ", pages));
  if (int64_t{a->maintenance.drop_pages} + pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("drop_pages: ", a->maintenance.drop_pages, " + ", pages,
                                                   " pages overflow"));
  }
  a->maintenance.drop_pages += pages;
  return a->total_rows;
}

absl::Status SessionStore::AbortAppend(const std::string& append_id) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<PendingAppend> a, FindAppend(append_id));
  absl::MutexLock append_lock(&a->mu);
  if (!a->open) return absl::NotFoundError(absl::StrCat("append \"", append_id, "\" was already committed or aborted"));
  AbortLocked(a.get(), "aborted by its writer");
  return absl::OkStatus();
}

absl::Status SessionStore::ApplyAppend(StoredSession* s, PendingAppend* a, bool* changed) {
  // Clustering and drops may read or free any run: nothing of the session stays cold under them.
  if (options_.cold_tier != nullptr) LIVEKV_RETURN_IF_ERROR(PromoteAll(*s));
  SequenceKv& kv = *s->kv;
  PoolSlot& slot = *s->slot;
  const DType dtype = s->geometry.layout.dtype;
  const Maintenance& m = a->maintenance;
  {
    absl::ReaderMutexLock pool_lock(&slot.alloc_mu);
    for (int32_t layer = 0; layer < s->geometry.num_layers; ++layer) {
      for (const PendingAppend::Rows& r : a->rows[layer]) {
        absl::Status st = kv.Append(layer, r.keys.data(), r.values.data(), r.rows, dtype);
        if (!st.ok()) {
          kv.Rollback();
          return PoolError(st, absl::StrCat("appending ", a->num_tokens, " tokens to session \"", s->id, "\""));
        }
      }
    }
    if (m.clusterings.empty()) {
      if (absl::Status st = kv.Commit(a->num_tokens); !st.ok()) {
        kv.Rollback();
        return st;
      }
      *changed = true;
      // Cannot fail after a commit (it only refuses layers with uncommitted rows).
      if (m.drop_pages > 0) LIVEKV_CHECK_OK(kv.DropPages(m.drop_pages));
      return absl::OkStatus();
    }
  }
  // From the trial to ApplyClustering nothing else may allocate or free in this pool.
  absl::MutexLock pool_lock(&slot.alloc_mu);
  if (absl::Status st = TryClusterRuns(slot.pool.get(), s->geometry.layout, m.clusterings); !st.ok()) {
    kv.Rollback();
    return st;
  }
  if (absl::Status st = kv.Commit(a->num_tokens); !st.ok()) {
    kv.Rollback();
    return st;
  }
  *changed = true;
  if (absl::Status st = kv.ApplyClustering(m.clusterings); !st.ok()) {
    // Unreachable while append_plan.h mirrors SequenceKv: the clustering was validated and its runs placed.
    LOG(ERROR) << "session " << s->id << ": clustering failed after the rows were committed: " << st;
    return absl::InternalError(absl::StrCat("session \"", s->id, "\": the append's rows were committed but its ",
                                            "clustering failed (", st.message(), "); reload the session"));
  }
  if (m.drop_pages > 0) LIVEKV_CHECK_OK(kv.DropPages(m.drop_pages));
  return absl::OkStatus();
}

absl::StatusOr<SessionInfo> SessionStore::CommitAppend(const std::string& append_id) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<PendingAppend> a, FindAppend(append_id));
  absl::MutexLock append_lock(&a->mu);
  if (!a->open) return absl::NotFoundError(absl::StrCat("append \"", append_id, "\" was already committed or aborted"));
  if (clock_->Now() >= a->deadline) {
    AbortLocked(a.get(), "its deadline passed");
    return absl::DeadlineExceededError(absl::StrCat("append \"", append_id, "\" passed its deadline (",
                                                    absl::FormatTime(a->deadline), ") and was aborted"));
  }
  const KvGeometry& g = a->session->geometry;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    if (a->received[layer] != a->num_tokens) {
      return absl::FailedPreconditionError(absl::StrCat("append \"", append_id, "\": layer ", layer, " has ",
                                                        a->received[layer], " of ", a->num_tokens, " rows"));
    }
  }
  StoredSession* s = a->session.get();
  absl::MutexLock session_lock(&s->mu);
  SequenceKv& kv = *s->kv;
  if (kv.num_tokens() != a->expected_tokens) {  // one append at a time makes this impossible
    return absl::AbortedError(absl::StrCat("session \"", s->id, "\" has ", kv.num_tokens(),
                                           " tokens; the append was begun on ", a->expected_tokens));
  }
  // Step 1: every check before any change.
  LIVEKV_RETURN_IF_ERROR(ValidateMaintenanceAfterAppend(kv, a->num_tokens, a->maintenance));
  const int64_t after = static_cast<int64_t>(PoolBytesAfterAppend(kv, a->num_tokens, a->maintenance));
  int64_t delta = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(s->id);
    if (it == sessions_.end() || it->second->session.get() != s) {
      return absl::NotFoundError(absl::StrCat("session \"", s->id, "\" was deleted"));
    }
    SessionEntry& entry = *it->second;
    delta = after - entry.bytes;
    TenantUsage& u = tenants_[s->tenant];
    if (options_.max_bytes_per_tenant > 0 && delta > 0 && u.bytes + delta > options_.max_bytes_per_tenant) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tenant \"", s->tenant, "\" holds ", u.bytes, " bytes; the append needs ", delta,
          " more, over the limit max_bytes_per_tenant ", options_.max_bytes_per_tenant));
    }
    // Reserve: the entry carries the reservation, so DeleteSession meanwhile releases it.
    u.bytes += delta;
    entry.bytes += delta;
  }
  // Steps 2 and 3.
  bool changed = false;
  const absl::Status applied = ApplyAppend(s, a.get(), &changed);
  if (changed) {
    a->DropStaging();
    s->version += 1;
  }
  const int64_t actual = static_cast<int64_t>(kv.pool_bytes());
  if (changed && actual != after) {
    LOG(ERROR) << "session " << s->id << ": predicted " << after << " pool bytes after the append, holds " << actual;
  }
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(s->id);
  const bool live = it != sessions_.end() && it->second->session.get() == s;
  if (live) {
    SessionEntry& entry = *it->second;
    TenantUsage& u = tenants_[s->tenant];
    const int64_t correction = (changed ? actual : after - delta) - entry.bytes;
    u.bytes += correction;
    entry.bytes += correction;
    if (changed) {
      entry.num_tokens = kv.num_tokens();
      entry.version = s->version;
      entry.append_id.clear();
    }
    entry.last_access = clock_->Now();
  }
  if (changed) {
    auto ap = appends_.find(a->id);
    if (ap != appends_.end() && ap->second == a) appends_.erase(ap);
    ++committed_appends_;
  }
  LIVEKV_RETURN_IF_ERROR(applied);
  if (!live) return absl::NotFoundError(absl::StrCat("session \"", s->id, "\" was deleted during the commit"));
  return InfoLocked(*it->second);
}

// ---------------------------------------------------------------------------------------------------------------
// Leases.

absl::StatusOr<LeaseInfo> SessionStore::AcquireLease(const std::string& session_id, absl::Duration ttl,
                                                     const std::string& holder) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("ttl must be >= 0, saw ", absl::FormatDuration(ttl)));
  }
  if (holder.size() > kMaxHolderLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("holder is ", holder.size(), " characters long; at most ", kMaxHolderLength));
  }
  if (ttl == absl::ZeroDuration()) ttl = options_.default_lease_ttl;
  Graveyard graveyard;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, now, &graveyard));
  auto lease = std::make_unique<LeaseEntry>();
  do {
    lease->id = NewIdLocked("lease-");
  } while (leases_.contains(lease->id));
  lease->session_id = entry->session->id;
  lease->holder = holder;
  lease->session = entry->session;
  lease->expires = now + ttl;
  entry->leases += 1;
  LeaseInfo info{lease->id, lease->session_id, lease->holder, lease->expires};
  // A new holder (a new question): promote what the session's recent requests used, ahead of its first recall.
  if (options_.cold_tier != nullptr) SchedulePrefetch(lease->session);
  leases_.emplace(lease->id, std::move(lease));
  return info;
}

absl::StatusOr<LeaseInfo> SessionStore::RenewLease(const std::string& lease_id, absl::Duration ttl) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("ttl must be >= 0, saw ", absl::FormatDuration(ttl)));
  }
  if (ttl == absl::ZeroDuration()) ttl = options_.default_lease_ttl;
  Graveyard graveyard;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  LIVEKV_ASSIGN_OR_RETURN(LeaseEntry * lease, FindLeaseLocked(lease_id, now, &graveyard));
  auto s = sessions_.find(lease->session_id);
  if (s == sessions_.end() || s->second->session != lease->session) {
    return absl::NotFoundError(absl::StrCat("session \"", lease->session_id, "\" of lease \"", lease_id,
                                            "\" was deleted; release the lease"));
  }
  s->second->last_access = now;
  lease->expires = now + ttl;
  return LeaseInfo{lease->id, lease->session_id, lease->holder, lease->expires};
}

absl::Status SessionStore::ReleaseLease(const std::string& lease_id) {
  Graveyard graveyard;  // the last lease of a deleted session frees its pages here, after the lock
  absl::MutexLock lock(&mu_);
  LIVEKV_ASSIGN_OR_RETURN(LeaseEntry * lease, FindLeaseLocked(lease_id, clock_->Now(), &graveyard));
  RemoveLeaseLocked(lease->id, &graveyard);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
// Reads.

absl::StatusOr<SessionIndex> SessionStore::GetIndex(const std::string& session_id, const std::vector<int32_t>& layers,
                                                    bool with_positions) {
  std::shared_ptr<StoredSession> s;
  {
    Graveyard graveyard;
    absl::MutexLock lock(&mu_);
    LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, clock_->Now(), &graveyard));
    s = entry->session;
  }
  const KvGeometry& g = s->geometry;
  std::vector<int32_t> wanted = layers;
  if (wanted.empty()) {
    for (int32_t l = 0; l < g.num_layers; ++l) wanted.push_back(l);
  }
  std::vector<bool> seen(g.num_layers, false);
  for (size_t i = 0; i < wanted.size(); ++i) {
    const int32_t l = wanted[i];
    if (l < 0 || l >= g.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "]: ", l, " is outside the session's layers [0, ", g.num_layers, ")"));
    }
    if (seen[l]) return absl::InvalidArgumentError(absl::StrCat("layers[", i, "]: layer ", l, " is repeated"));
    seen[l] = true;
  }
  const int64_t d = g.layout.head_dim;
  SessionIndex index;
  index.geometry = g;
  absl::ReaderMutexLock session_lock(&s->mu);
  const SequenceKv& kv = *s->kv;
  index.version = s->version;
  index.num_tokens = kv.num_tokens();
  index.heads.reserve(wanted.size() * g.num_kv_heads);
  for (int32_t l : wanted) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const HeadKv& head = kv.head(l, h);
      HeadIndexData hi;
      hi.layer = l;
      hi.kv_head = h;
      hi.sink_count = head.sink_count();
      hi.cluster_sizes = head.cluster_sizes();
      hi.centroids.assign(head.centroids(), head.centroids() + head.num_clusters() * d);
      if (with_positions) {
        for (int32_t c = 0; c < head.num_clusters(); ++c) {
          const std::vector<int32_t>& p = head.cluster(c).positions;
          hi.cluster_positions.insert(hi.cluster_positions.end(), p.begin(), p.end());
        }
      }
      for (int32_t p = 0; p < head.num_pages(); ++p) {
        hi.page_first_positions.push_back(head.page(p).first_position);
        hi.page_counts.push_back(head.page(p).count);
      }
      hi.page_hi.assign(head.page_hi(), head.page_hi() + head.num_complete_pages() * d);
      hi.page_lo.assign(head.page_lo(), head.page_lo() + head.num_complete_pages() * d);
      index.heads.push_back(std::move(hi));
    }
  }
  return index;
}

absl::StatusOr<std::shared_ptr<SessionStore::StoredSession>> SessionStore::FindLeasedSession(
    const std::string& session_id, const std::string& lease_id) {
  Graveyard graveyard;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  LIVEKV_ASSIGN_OR_RETURN(SessionEntry * entry, FindSessionLocked(session_id, now, &graveyard));
  LIVEKV_ASSIGN_OR_RETURN(LeaseEntry * lease, FindLeaseLocked(lease_id, now, &graveyard));
  if (lease->session != entry->session) {
    return absl::FailedPreconditionError(absl::StrCat("lease \"", lease_id, "\" belongs to session \"",
                                                      lease->session_id, "\", not \"", entry->session->id, "\""));
  }
  return entry->session;
}

absl::Status SessionStore::ResolveLocked(const StoredSession& s, int64_t version, const std::vector<BlockList>& blocks,
                                         std::vector<ResolvedBlock>* out) const {
  const KvGeometry& g = s.geometry;
  const SequenceKv& kv = *s.kv;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockList& list = blocks[i];
    if (list.layer < 0 || list.layer >= g.num_layers || list.kv_head < 0 || list.kv_head >= g.num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "]: layer ", list.layer, " head ", list.kv_head,
                                                     " is outside the session's geometry (", g.num_layers,
                                                     " layers, ", g.num_kv_heads, " KV heads)"));
    }
    const HeadKv& head = kv.head(list.layer, list.kv_head);
    for (const BlockRef& ref : list.blocks) {
      ResolvedBlock b;
      b.layer = list.layer;
      b.kv_head = list.kv_head;
      b.ref = ref;
      switch (ref.kind) {
        case BlockRef::Kind::kSink:
          if (g.sink_tokens == 0) {
            return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].sink: session \"", s.id,
                                                           "\" has no sink (sink_tokens is 0)"));
          }
          b.tokens = head.sink_count();
          break;
        case BlockRef::Kind::kCluster:
          if (ref.index < 0 || ref.index >= head.num_clusters()) {
            return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].clusters: layer ", list.layer, " head ",
                                                           list.kv_head, " has no cluster ", ref.index, " (it has ",
                                                           head.num_clusters(), ")"));
          }
          b.tokens = head.cluster(ref.index).num_tokens;
          b.key = head.cluster(ref.index).key;
          break;
        case BlockRef::Kind::kPage: {
          const int32_t p = FindPage(head, ref.first_position);
          if (p < 0) {
            const std::string what = absl::StrCat("layer ", list.layer, " head ", list.kv_head,
                                                  " has no page at position ", ref.first_position);
            if (version != 0 && version != s.version) {
              return absl::AbortedError(absl::StrCat("session \"", s.id, "\" changed since version ", version,
                                                     " (now ", s.version, "): ", what, "; reload the index"));
            }
            if (version != 0) {
              return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].pages: ", what, " at version ",
                                                             version));
            }
            return absl::NotFoundError(absl::StrCat("blocks[", i, "].pages: ", what));
          }
          b.tokens = head.page(p).count;
          b.key = head.page(p).key;
          break;
        }
      }
      absl::StatusOr<absl::Span<uint8_t>> bytes = kv.BlockBytes(list.layer, list.kv_head, ref);
      if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "]: ", bytes.status().message()));
      b.run = *bytes;
      out->push_back(b);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RecallReader>> SessionStore::StartRecall(const std::string& session_id,
                                                                       const std::string& lease_id, int64_t version,
                                                                       const std::vector<BlockList>& blocks) {
  if (version < 0) return absl::InvalidArgumentError(absl::StrCat("version must be >= 0, saw ", version));
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<StoredSession> s, FindLeasedSession(session_id, lease_id));
  std::unique_ptr<RecallReader> reader(new RecallReader());
  reader->store_ = this;
  std::vector<ResolvedBlock> resolved;
  {
    absl::ReaderMutexLock session_lock(&s->mu);
    LIVEKV_RETURN_IF_ERROR(ResolveLocked(*s, version, blocks, &resolved));
    LIVEKV_RETURN_IF_ERROR(PromoteDemanded(*s, resolved));
    s->readers.fetch_add(1);  // under the lock: the reaper never demotes while a reader may copy
  }
  for (const ResolvedBlock& r : resolved) {
    RecallReader::Block b;
    b.layer = r.layer;
    b.kv_head = r.kv_head;
    b.ref = r.ref;
    b.tokens = r.tokens;
    b.bytes = static_cast<int64_t>(r.run.size());
    reader->total_bytes_ += b.bytes;
    reader->blocks_.push_back(b);
  }
  reader->session_ = std::move(s);
  return reader;
}

absl::StatusOr<PoolView> SessionStore::SessionPool(const std::string& session_id, const std::string& lease_id) {
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<StoredSession> s, FindLeasedSession(session_id, lease_id));
  const PoolSlot& slot = *s->slot;
  return PoolView{slot.id, slot.pool->page_bytes(), slot.pool->num_pages(), slot.pool->base(), slot.generations,
                  slot.generation_region_bytes};
}

std::vector<PoolView> SessionStore::Pools() const {
  std::vector<PoolView> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [page_bytes, slot] : pools_) {
    out.push_back(PoolView{slot->id, slot->pool->page_bytes(), slot->pool->num_pages(), slot->pool->base(),
                           slot->generations, slot->generation_region_bytes});
  }
  std::sort(out.begin(), out.end(), [](const PoolView& a, const PoolView& b) { return a.pool_id < b.pool_id; });
  return out;
}

absl::StatusOr<std::vector<BlockLocation>> SessionStore::ResolveBlocks(const std::string& session_id,
                                                                       const std::string& lease_id, int64_t version,
                                                                       const std::vector<BlockList>& blocks) {
  if (version < 0) return absl::InvalidArgumentError(absl::StrCat("version must be >= 0, saw ", version));
  LIVEKV_ASSIGN_OR_RETURN(std::shared_ptr<StoredSession> s, FindLeasedSession(session_id, lease_id));
  PoolSlot* const slot = s->slot;
  PagePool& pool = *slot->pool;
  std::vector<ResolvedBlock> resolved;
  std::vector<PagePool::Handle> handles;
  {
    // The runs are looked up (pinned) while the session's lock keeps them in the session.
    absl::ReaderMutexLock session_lock(&s->mu);
    LIVEKV_RETURN_IF_ERROR(ResolveLocked(*s, version, blocks, &resolved));
    LIVEKV_RETURN_IF_ERROR(PromoteDemanded(*s, resolved));
    handles.reserve(resolved.size());
    for (const ResolvedBlock& r : resolved) {
      if (r.key == 0) {
        handles.emplace_back();
        continue;
      }
      std::optional<PagePool::Handle> h = pool.Lookup(r.key);
      CHECK(h.has_value()) << "session " << s->id << " holds pool entry " << r.key << " that its pool lacks";
      handles.push_back(std::move(*h));
    }
  }
  std::vector<BlockLocation> out(resolved.size());
  Graveyard graveyard;  // pins of runs the lease holds already; released after the lock
  absl::MutexLock lock(&mu_);
  auto lease_it = leases_.find(lease_id);
  if (lease_it == leases_.end() || lease_it->second->session != s || clock_->Now() >= lease_it->second->expires) {
    for (PagePool::Handle& h : handles) {
      if (h.valid()) graveyard.pins.emplace_back(slot, std::move(h));
    }
    return absl::NotFoundError(absl::StrCat("lease \"", lease_id, "\" ended while its blocks were resolved"));
  }
  LeaseEntry& lease = *lease_it->second;
  const size_t page_bytes = pool.page_bytes();
  for (size_t i = 0; i < resolved.size(); ++i) {
    const ResolvedBlock& r = resolved[i];
    BlockLocation& loc = out[i];
    const size_t offset = static_cast<size_t>(r.run.data() - pool.base());
    loc.pool_id = slot->id;
    loc.first_page = static_cast<uint32_t>(offset / page_bytes);
    loc.num_pages = static_cast<uint32_t>(r.run.size() / page_bytes);
    loc.tokens = r.tokens;
    const uint64_t key = RunKey(slot->id, loc.first_page);
    auto [pin, inserted] = lease.pins.try_emplace(key);
    if (inserted) {
      pin->second.slot = slot;
      pin->second.first_page = loc.first_page;
      pin->second.num_pages = loc.num_pages;
      pin->second.handle = std::move(handles[i]);
      if (++run_pins_[key] == 1) pinned_bytes_ += static_cast<int64_t>(r.run.size());
    } else if (handles[i].valid()) {
      graveyard.pins.emplace_back(slot, std::move(handles[i]));
    }
    // Read after the pin is counted: from here the generation changes only once this lease's pin goes.
    loc.generation = LoadGeneration(&slot->generations[loc.first_page]);
  }
  resolved_blocks_ += static_cast<int64_t>(resolved.size());
  return out;
}

absl::Status SessionStore::PromoteDemanded(StoredSession& s, const std::vector<ResolvedBlock>& blocks) {
  if (options_.cold_tier == nullptr) return absl::OkStatus();
  std::vector<std::tuple<int32_t, int32_t, int32_t>> selection;
  std::vector<ColdTier::RunKey> hot;
  int64_t misses = 0;
  for (const ResolvedBlock& r : blocks) {
    if (r.ref.kind != BlockRef::Kind::kCluster || r.key == 0) continue;
    selection.emplace_back(r.layer, r.kv_head, r.ref.index);
    const ColdTier::RunKey key{s.slot->id, r.key};
    LIVEKV_ASSIGN_OR_RETURN(const bool was_cold, options_.cold_tier->Promote(key, r.run));
    if (was_cold) {
      ++misses;
    } else {
      hot.push_back(key);
    }
  }
  if (selection.empty()) return absl::OkStatus();
  {
    absl::MutexLock lock(&prefetch_mu_);
    prefetch_misses_ += misses;
    for (const ColdTier::RunKey& key : hot) prefetch_hits_ += prefetched_.erase(key);
  }
  absl::MutexLock lock(&s.history_mu);
  s.history.push_back(std::move(selection));
  while (static_cast<int32_t>(s.history.size()) > std::max(options_.prefetch_history, 0)) s.history.pop_front();
  return absl::OkStatus();
}

absl::Status SessionStore::PromoteAll(StoredSession& s) {
  const SequenceKv& kv = *s.kv;
  for (int32_t l = 0; l < s.geometry.num_layers; ++l) {
    for (int32_t h = 0; h < s.geometry.num_kv_heads; ++h) {
      const HeadKv& head = kv.head(l, h);
      for (int32_t c = 0; c < head.num_clusters(); ++c) {
        const ColdTier::RunKey key{s.slot->id, head.cluster(c).key};
        if (!options_.cold_tier->IsCold(key)) continue;
        LIVEKV_ASSIGN_OR_RETURN(absl::Span<uint8_t> run, kv.BlockBytes(l, h, {BlockRef::Kind::kCluster, c, 0}));
        LIVEKV_RETURN_IF_ERROR(options_.cold_tier->Promote(key, run).status());
      }
    }
  }
  return absl::OkStatus();
}

void SessionStore::DemoteIfIdle(const std::shared_ptr<StoredSession>& session) {
  StoredSession& s = *session;
  // Exclusive: no Recall or ResolveBlocks of this session runs until the runs are spilled (they would promote).
  absl::MutexLock session_lock(&s.mu);
  if (s.readers.load() > 0) return;
  struct Run {
    ColdTier::RunKey key;
    absl::Span<uint8_t> bytes;
    uint32_t first_page;
  };
  std::vector<Run> runs;
  PagePool& pool = *s.slot->pool;
  const SequenceKv& kv = *s.kv;
  for (int32_t l = 0; l < s.geometry.num_layers; ++l) {
    for (int32_t h = 0; h < s.geometry.num_kv_heads; ++h) {
      const HeadKv& head = kv.head(l, h);
      for (int32_t c = 0; c < head.num_clusters(); ++c) {
        const ColdTier::RunKey key{s.slot->id, head.cluster(c).key};
        if (key.second == 0 || options_.cold_tier->IsCold(key)) continue;
        absl::StatusOr<absl::Span<uint8_t>> run = kv.BlockBytes(l, h, {BlockRef::Kind::kCluster, c, 0});
        if (!run.ok() || run->empty()) continue;
        runs.push_back({key, *run, static_cast<uint32_t>((run->data() - pool.base()) / pool.page_bytes())});
      }
    }
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(s.id);
    if (it == sessions_.end() || it->second->session != session) return;
    SessionEntry& entry = *it->second;
    if (entry.leases > 0 || !entry.append_id.empty() || clock_->Now() - entry.last_access < options_.cold_after) {
      return;
    }
    entry.demoted_at_access = entry.last_access;
    // A reader whose lease ended may still be copying a run (shm, UCX): the increment tells it its copy is void.
    std::vector<Run> unpinned;
    for (const Run& r : runs) {
      if (run_pins_.contains(RunKey(s.slot->id, r.first_page))) continue;
      BumpGenerations(s.slot->generations, r.first_page, static_cast<uint32_t>(r.bytes.size() / pool.page_bytes()));
      unpinned.push_back(r);
    }
    runs.swap(unpinned);
  }
  for (const Run& r : runs) {
    if (absl::Status st = options_.cold_tier->Demote(r.key, r.bytes); !st.ok()) {
      LOG(WARNING) << "session " << s.id << ": demoting a cluster run: " << st;
      return;
    }
  }
}

void SessionStore::SchedulePrefetch(const std::shared_ptr<StoredSession>& s) {
  absl::MutexLock lock(&prefetch_mu_);
  prefetch_queue_.push_back(s);
}

void SessionStore::PrefetchLoop() {
  while (true) {
    std::shared_ptr<StoredSession> s;
    {
      absl::MutexLock lock(&prefetch_mu_);
      prefetch_mu_.Await(absl::Condition(
          +[](SessionStore* store) ABSL_EXCLUSIVE_LOCKS_REQUIRED(store->prefetch_mu_) {
            return store->prefetch_stop_ || !store->prefetch_queue_.empty();
          },
          this));
      if (prefetch_stop_) return;
      s = prefetch_queue_.front().lock();
      prefetch_queue_.pop_front();
    }
    if (s != nullptr) PrefetchSession(*s);
  }
}

void SessionStore::PrefetchSession(StoredSession& s) {
  std::vector<std::tuple<int32_t, int32_t, int32_t>> predicted;
  {
    absl::MutexLock lock(&s.history_mu);
    for (const auto& selection : s.history) predicted.insert(predicted.end(), selection.begin(), selection.end());
  }
  std::sort(predicted.begin(), predicted.end());
  predicted.erase(std::unique(predicted.begin(), predicted.end()), predicted.end());
  absl::ReaderMutexLock session_lock(&s.mu);
  const SequenceKv& kv = *s.kv;
  std::vector<ColdTier::RunKey> promoted;
  for (const auto& [l, h, c] : predicted) {
    // The index may have changed since (a commit re-clustered): a stale prediction promotes another cluster.
    if (l >= s.geometry.num_layers || h >= s.geometry.num_kv_heads || c >= kv.head(l, h).num_clusters()) continue;
    const ColdTier::RunKey key{s.slot->id, kv.head(l, h).cluster(c).key};
    absl::StatusOr<absl::Span<uint8_t>> run = kv.BlockBytes(l, h, {BlockRef::Kind::kCluster, c, 0});
    if (!run.ok()) continue;
    absl::StatusOr<bool> was_cold = options_.cold_tier->Promote(key, *run);
    if (!was_cold.ok()) {
      LOG(WARNING) << "session " << s.id << ": prefetch: " << was_cold.status();
      return;
    }
    if (*was_cold) promoted.push_back(key);
  }
  absl::MutexLock lock(&prefetch_mu_);
  prefetched_runs_ += static_cast<int64_t>(promoted.size());
  prefetched_.insert(promoted.begin(), promoted.end());
}

RecallReader::RecallReader() = default;
RecallReader::~RecallReader() {
  if (session_ != nullptr) session_->readers.fetch_sub(1);
}

absl::Status RecallReader::Next(size_t max_bytes, std::string* out) {
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(max_bytes), total_bytes_ - offset_);
  out->resize(static_cast<size_t>(n));
  uint8_t* dst = reinterpret_cast<uint8_t*>(out->data());
  SessionStore::StoredSession& s = *session_;
  absl::ReaderMutexLock session_lock(&s.mu);
  const SequenceKv& kv = *s.kv;
  for (int64_t written = 0; written < n;) {
    const Block& b = blocks_[cursor_];
    absl::StatusOr<absl::Span<uint8_t>> run = kv.BlockBytes(b.layer, b.kv_head, b.ref);
    if (!run.ok() || static_cast<int64_t>(run->size()) != b.bytes) {
      return absl::AbortedError(absl::StrCat("session \"", s.id, "\" changed during the recall (",
                                             run.ok() ? "a block moved" : run.status().message(),
                                             "); reload the index"));
    }
    const int64_t take = std::min(n - written, b.bytes - cursor_offset_);
    CopyBlockRange(run->data(), s.geometry.layout, b.tokens, cursor_offset_, take, dst + written);
    written += take;
    cursor_offset_ += take;
    if (cursor_offset_ == b.bytes) {
      ++cursor_;
      cursor_offset_ = 0;
    }
  }
  offset_ += n;
  store_->recall_bytes_.fetch_add(n, std::memory_order_relaxed);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
// Stats and expiry.

StoreStats SessionStore::Stats() const {
  StoreStats st;
  absl::MutexLock lock(&mu_);
  st.sessions = static_cast<int64_t>(sessions_.size());
  st.leases = static_cast<int64_t>(leases_.size());
  st.open_appends = static_cast<int64_t>(appends_.size());
  for (const auto& [page_bytes, slot] : pools_) {
    const PagePool::Stats ps = slot->pool->stats();
    st.pool_capacity_bytes += static_cast<int64_t>(ps.capacity_bytes);
    st.pool_used_bytes += static_cast<int64_t>(ps.used_bytes);
  }
  st.recall_bytes = recall_bytes_.load(std::memory_order_relaxed);
  st.expired_sessions = expired_sessions_;
  st.expired_leases = expired_leases_;
  st.aborted_appends = aborted_appends_;
  st.committed_appends = committed_appends_;
  st.pinned_runs = static_cast<int64_t>(run_pins_.size());
  st.pinned_bytes = pinned_bytes_;
  st.resolved_blocks = resolved_blocks_;
  if (options_.cold_tier != nullptr) {
    const ColdTierStats cold = options_.cold_tier->stats();
    st.cold_runs = cold.cold_runs;
    st.cold_bytes = cold.cold_bytes;
    st.demoted_runs = cold.demoted_runs;
    absl::MutexLock prefetch_lock(&prefetch_mu_);
    st.prefetched_runs = prefetched_runs_;
    st.prefetch_hits = prefetch_hits_;
    st.prefetch_misses = prefetch_misses_;
  }
  return st;
}

void SessionStore::ReapOnce() {
  Graveyard graveyard;
  std::vector<std::shared_ptr<PendingAppend>> late;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    std::vector<std::string> ids;
    for (const auto& [id, lease] : leases_) {
      if (now >= lease->expires) ids.push_back(id);
    }
    for (const std::string& id : ids) {
      ++expired_leases_;
      RemoveLeaseLocked(id, &graveyard);
    }
    for (const auto& [id, a] : appends_) {
      if (now >= a->deadline) late.push_back(a);
    }
    ids.clear();
    for (const auto& [id, entry] : sessions_) {
      if (entry->Expired(now)) ids.push_back(id);
    }
    for (const std::string& id : ids) {
      ++expired_sessions_;
      RemoveSessionLocked(id, &graveyard, nullptr);
    }
  }
  for (const std::shared_ptr<PendingAppend>& a : late) {
    // An append being committed holds its lock; its commit decides.
    if (!a->mu.TryLock()) continue;
    if (a->open) AbortLocked(a.get(), "its deadline passed");
    a->mu.Unlock();
  }
  if (options_.cold_tier == nullptr || options_.cold_after == absl::InfiniteDuration()) return;
  std::vector<std::shared_ptr<StoredSession>> idle;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    for (const auto& [id, entry] : sessions_) {
      if (entry->leases == 0 && entry->append_id.empty() && now - entry->last_access >= options_.cold_after &&
          entry->demoted_at_access != entry->last_access) {
        idle.push_back(entry->session);
      }
    }
  }
  for (const std::shared_ptr<StoredSession>& s : idle) DemoteIfIdle(s);
}

void SessionStore::StartReaper(absl::Duration interval) {
  StopReaper();
  {
    absl::MutexLock lock(&reaper_mu_);
    reaper_stop_ = false;
  }
  reaper_ = std::thread([this, interval] {
    for (;;) {
      {
        absl::MutexLock lock(&reaper_mu_);
        if (reaper_mu_.AwaitWithTimeout(absl::Condition(&reaper_stop_), interval)) return;
      }
      ReapOnce();
    }
  });
}

void SessionStore::StopReaper() {
  {
    absl::MutexLock lock(&reaper_mu_);
    reaper_stop_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
}

}  // namespace livekv
