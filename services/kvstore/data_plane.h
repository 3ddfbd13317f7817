// File: services/kvstore/data_plane.h
//
// What the KV store offers the byte channels of its lease holders (KvStore.OpenChannel, ARCHITECTURE.md §5):
//   shm  the names of the shared-memory segments holding a pool's arena and its generation table, when the
//        store's allocator is a ShmArena (livekv_kvstore --shm_arena, the default);
//   ucx  the address of a UCX worker and remote keys for the arena and the generation table, registered on first
//        offer (livekv_kvstore --ucx, the default). A progress thread serves the gets (services/channels/ucx.h).
// The pins and generations that make reading safe are the SessionStore's (session_store.h, "Pins and
// generations"); this class only tells readers where the memory is.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<ShmArena> arena, ShmArena::Create({}));
//   SessionStore store(options, clock, arena.get());
//   DataPlane plane({.shm = arena.get(), .ucx = true});
//   KvStoreService::Options so;  so.data_plane = &plane;
//   KvStoreService service(&store, &metrics, so);
//
// Thread-safety: thread-safe.
#ifndef LIVEKV_SERVICES_KVSTORE_DATA_PLANE_H_
#define LIVEKV_SERVICES_KVSTORE_DATA_PLANE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/shm/shm_arena.h"
#include "proto/livekv/v1/kvstore.pb.h"
#include "services/channels/ucx.h"
#include "services/kvstore/session_store.h"

namespace livekv {

class DataPlane {
 public:
  struct Options {
    ShmArena* shm = nullptr;  // borrowed: the store's allocator, when it is a shared-memory arena
    bool ucx = false;         // start a UCX server
    ucx::Options ucx_options;
  };

  // A UCX server that cannot start is not fatal: the reason is logged and given to clients that want UCX.
  explicit DataPlane(const Options& options);
  ~DataPlane();  // stops UCX (REQUIRES: no OpenChannel in flight)
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  // Fills response->shm / ucx for `pool` (or *_unavailable with the reason) for the kinds wanted.
  void Offer(const PoolView& pool, bool want_shm, bool want_ucx, v1::OpenChannelResponse* response);

  bool shm_enabled() const { return options_.shm != nullptr; }
  // OK when UCX runs; otherwise why not.
  absl::Status ucx_status() const { return ucx_status_; }

 private:
  absl::Status OfferShm(const PoolView& pool, v1::ShmOffer* offer);
  absl::Status OfferUcx(const PoolView& pool, v1::UcxOffer* offer);

  const Options options_;
  std::unique_ptr<ucx::Server> ucx_;
  absl::Status ucx_status_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_DATA_PLANE_H_
