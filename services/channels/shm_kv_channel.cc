#include "services/channels/shm_kv_channel.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/shm/generation_table.h"
#include "common/status_macros.h"

namespace livekv {

ShmMappings& ShmMappings::Process() {
  static ShmMappings* mappings = new ShmMappings();
  return *mappings;
}

absl::StatusOr<std::shared_ptr<const ShmSegment>> ShmMappings::Get(const std::string& name, bool populate) {
  std::vector<std::shared_ptr<const ShmSegment>> dropped;  // unmapped after the lock
  absl::MutexLock lock(&mu_);
  for (auto it = mappings_.begin(); it != mappings_.end();) {
    if (it->second.use_count() == 1 && !it->second->OwnerAlive()) {
      dropped.push_back(std::move(it->second));
      it = mappings_.erase(it);
    } else {
      ++it;
    }
  }
  auto it = mappings_.find(name);
  if (it != mappings_.end()) return it->second;
  // Opened under the lock: two channels of one store must not map its 4 GiB twice.
  LIVEKV_ASSIGN_OR_RETURN(ShmSegment segment, ShmSegment::OpenReadOnly(name, populate));
  auto shared = std::make_shared<const ShmSegment>(std::move(segment));
  mappings_.emplace(name, shared);
  return shared;
}

size_t ShmMappings::size() const {
  absl::MutexLock lock(&mu_);
  return mappings_.size();
}

absl::StatusOr<std::unique_ptr<ShmKvChannel>> ShmKvChannel::Open(KvStoreClient* store, std::string session_id,
                                                                 StoreLease lease, int64_t version,
                                                                 const v1::ShmOffer& offer, const PageLayout& layout,
                                                                 const Options& options) {
  if (offer.pools_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("the store's shared-memory offer lists ", offer.pools_size(),
                                                   " pools; a session has one"));
  }
  const v1::ShmPool& pool = offer.pools(0);
  if (pool.page_bytes() != static_cast<int64_t>(layout.page_bytes()) || pool.num_pages() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("the store's pool ", pool.pool_id(), " has ", pool.num_pages(),
                                                   " pages of ", pool.page_bytes(), " bytes; the session's pages are ",
                                                   layout.page_bytes()));
  }
  std::unique_ptr<ShmKvChannel> ch(
      new ShmKvChannel(store, std::move(session_id), std::move(lease), version, layout));
  ch->pool_id_ = pool.pool_id();
  ch->num_pages_ = static_cast<uint32_t>(pool.num_pages());
  ch->page_bytes_ = static_cast<size_t>(pool.page_bytes());
  LIVEKV_ASSIGN_OR_RETURN(ch->arena_, ShmMappings::Process().Get(pool.name(), options.populate));
  LIVEKV_ASSIGN_OR_RETURN(ch->generations_, ShmMappings::Process().Get(pool.generation_segment(), options.populate));
  if (ch->arena_->size() < ch->page_bytes_ * ch->num_pages_ ||
      ch->generations_->size() < GenerationTableBytes(ch->num_pages_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared-memory segments ", pool.name(), " (", ch->arena_->size(), " bytes) and ", pool.generation_segment(),
        " (", ch->generations_->size(), " bytes) are smaller than pool ", pool.pool_id(), " of ", ch->num_pages_,
        " pages of ", ch->page_bytes_, " bytes"));
  }
  return ch;
}

namespace {

// memcpy with non-temporal stores for the 32-byte-aligned body of large pieces: a recalled run is written once and
// read later by another thread, so its destination lines need not be read first (a cached store reads each line
// before writing it) nor kept in this core's cache. glibc's memcpy streams only copies larger than most of the
// cache; pieces here are 4-256 KiB. REQUIRES: an _mm_sfence() before the destination is handed over.
void CopyStreaming(uint8_t* dst, const uint8_t* src, size_t bytes) {
  constexpr size_t kMinStreaming = 4096;
  if (bytes < kMinStreaming) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const size_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  bytes -= head;
  size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 64));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 96), d);
  }
  std::memcpy(dst + i, src + i, bytes - i);
}

}  // namespace

absl::Status ShmKvChannel::Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) {
  ++stats_.fetches;
  LIVEKV_RETURN_IF_ERROR(locator_.Locate(blocks, &locations_, &stats_));
  const uint8_t* arena = arena_->data();
  const uint64_t* generations = reinterpret_cast<const uint64_t*>(generations_->data());
  int64_t bytes = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const RunLocation& loc = locations_[i];
    if (loc.pool_id != pool_id_ || loc.num_pages == 0 || uint64_t{loc.first_page} + loc.num_pages > num_pages_) {
      return absl::InternalError(absl::StrCat("the store located a block at pool ", loc.pool_id, " pages [",
                                              loc.first_page, ", ", uint64_t{loc.first_page} + loc.num_pages,
                                              "); the channel maps pool ", pool_id_, " of ", num_pages_, " pages"));
    }
    LIVEKV_RETURN_IF_ERROR(CheckDestination(blocks[i], loc, page_bytes_));
  }
  // Early exit when the lease has ended already; the check after the copies is the one that counts.
  size_t stale = blocks.size();  // the first stale block, if any
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (LoadGeneration(&generations[locations_[i].first_page]) != locations_[i].generation) {
      stale = i;
      break;
    }
  }
  if (stale == blocks.size()) {
    pieces_.clear();
    for (size_t i = 0; i < blocks.size(); ++i) {
      PlanRunCopy(layout_, locations_[i], blocks[i].destination, &pieces_);
      bytes += static_cast<int64_t>(blocks[i].destination.size());
    }
    // In pool order: the reads then walk the arena forwards (the hardware prefetchers follow), whatever order
    // the blocks were asked in.
    std::sort(pieces_.begin(), pieces_.end(), [](const CopyPiece& a, const CopyPiece& b) { return a.src < b.src; });
    for (const CopyPiece& p : pieces_) CopyStreaming(p.dst, arena + p.src, p.bytes);
    _mm_sfence();  // the streaming stores are weakly ordered: complete them before Fetch returns
  }
  GenerationReaderFence();
  for (size_t i = 0; i < blocks.size() && stale == blocks.size(); ++i) {
    if (LoadGenerationRelaxed(&generations[locations_[i].first_page]) != locations_[i].generation) stale = i;
  }
  if (stale != blocks.size()) {
    ++stats_.stale_runs;
    const RunLocation& loc = locations_[stale];
    locator_.Forget(blocks[stale]);
    // Other blocks resolved under the same lease are as stale: forget them all.
    for (const BlockDestination& b : blocks) locator_.Forget(b);
    return absl::AbortedError(absl::StrCat("pages [", loc.first_page, ", ", loc.first_page + loc.num_pages,
                                           ") of pool ", pool_id_, " changed generation since they were resolved ",
                                           "(the lease ended and the store reused them); acquire a new lease"));
  }
  if (!generations_->OwnerAlive()) {
    return absl::UnavailableError(absl::StrCat("the KV store that owned shared-memory segment ",
                                               generations_->name(), " is gone"));
  }
  stats_.bytes += bytes;
  if (bytes_out != nullptr) *bytes_out = bytes;
  return absl::OkStatus();
}

}  // namespace livekv
