#include "services/kvstore/data_plane.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace livekv {

DataPlane::DataPlane(const Options& options) : options_(options) {
  if (!options_.ucx) {
    ucx_status_ = absl::UnavailableError("the store runs without UCX (--noucx)");
    return;
  }
  absl::StatusOr<std::unique_ptr<ucx::Server>> server = ucx::Server::Start(options_.ucx_options);
  if (server.ok()) {
    ucx_ = std::move(*server);
  } else {
    ucx_status_ = absl::UnavailableError(absl::StrCat("the store's UCX did not start: ", server.status().message()));
    LOG(WARNING) << ucx_status_.message() << "; serving shared memory and gRPC only";
  }
}

DataPlane::~DataPlane() = default;

absl::Status DataPlane::OfferShm(const PoolView& pool, v1::ShmOffer* offer) {
  if (options_.shm == nullptr) {
    return absl::UnavailableError("the store's pools are not in shared memory (it runs with --noshm_arena)");
  }
  const std::optional<ShmArena::Region> arena = options_.shm->Find(pool.arena);
  const std::optional<ShmArena::Region> table = options_.shm->Find(pool.generations);
  if (!arena.has_value() || !table.has_value() || arena->base != pool.arena || table->base != static_cast<void*>(pool.generations)) {
    return absl::InternalError(absl::StrCat("pool ", pool.pool_id, " is not a region of the store's shared-memory arena"));
  }
  v1::ShmPool* p = offer->add_pools();
  p->set_pool_id(pool.pool_id);
  p->set_name(arena->name);
  p->set_size(static_cast<int64_t>(arena->bytes));
  p->set_page_bytes(static_cast<int64_t>(pool.page_bytes));
  p->set_num_pages(pool.num_pages);
  p->set_generation_segment(table->name);
  p->set_generation_size(static_cast<int64_t>(table->bytes));
  return absl::OkStatus();
}

absl::Status DataPlane::OfferUcx(const PoolView& pool, v1::UcxOffer* offer) {
  LIVEKV_RETURN_IF_ERROR(ucx_status_);
  const size_t arena_bytes = pool.page_bytes * pool.num_pages;
  LIVEKV_ASSIGN_OR_RETURN(std::string arena_rkey, ucx_->Register(pool.arena, arena_bytes));
  LIVEKV_ASSIGN_OR_RETURN(std::string table_rkey, ucx_->Register(pool.generations, pool.generation_region_bytes));
  offer->set_worker_address(ucx_->worker_address());
  v1::UcxPool* p = offer->add_pools();
  p->set_pool_id(pool.pool_id);
  p->set_base_address(reinterpret_cast<uint64_t>(pool.arena));
  p->set_size(static_cast<int64_t>(arena_bytes));
  p->set_rkey(std::move(arena_rkey));
  p->set_page_bytes(static_cast<int64_t>(pool.page_bytes));
  p->set_num_pages(pool.num_pages);
  p->set_generation_address(reinterpret_cast<uint64_t>(pool.generations));
  p->set_generation_rkey(std::move(table_rkey));
  return absl::OkStatus();
}

void DataPlane::Offer(const PoolView& pool, bool want_shm, bool want_ucx, v1::OpenChannelResponse* response) {
  if (want_shm) {
    v1::ShmOffer offer;
    const absl::Status s = OfferShm(pool, &offer);
    if (s.ok()) {
      *response->mutable_shm() = std::move(offer);
    } else {
      response->set_shm_unavailable(std::string(s.message()));
    }
  }
  if (want_ucx) {
    v1::UcxOffer offer;
    const absl::Status s = OfferUcx(pool, &offer);
    if (s.ok()) {
      *response->mutable_ucx() = std::move(offer);
    } else {
      response->set_ucx_unavailable(std::string(s.message()));
    }
  }
}

}  // namespace livekv
