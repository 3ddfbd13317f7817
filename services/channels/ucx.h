// File: services/channels/ucx.h
//
// Move-free RAII owners of the UCX (UCP) objects the KV byte channel uses, shared by the store's side (Server:
// registered pool arenas that clients read with one-sided gets) and the worker's side (Endpoint: gets into
// caller memory). Only RMA is used: the store never sends; a client reads page runs and their generations.
//
//   store:   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<ucx::Server> server, ucx::Server::Start({}));
//            LIVEKV_ASSIGN_OR_RETURN(std::string rkey, server->Register(arena, arena_bytes));
//            send server->worker_address(), rkey and the arena's address to the client
//   worker:  LIVEKV_ASSIGN_OR_RETURN(ucx::Context* ctx, ucx::ClientContext());
//            LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<ucx::Endpoint> ep, ucx::Endpoint::Connect(ctx, address));
//            LIVEKV_ASSIGN_OR_RETURN(int key, ep->AddRemoteKey(rkey));
//            LIVEKV_RETURN_IF_ERROR(ep->Get(dst, bytes, remote_address, key));  ... more gets ...
//            LIVEKV_RETURN_IF_ERROR(ep->WaitAll(absl::Seconds(10)));
//
// Progress. RMA over TCP (UCX emulates it with active messages) needs the target's worker progressed, so the
// Server runs a progress thread. It sleeps on the worker's event descriptor (UCP_FEATURE_WAKEUP) between bursts:
// busy polling would take a whole core from the 2 vCPUs of a CI box.
//
// Failure. Endpoints use UCP_ERR_HANDLING_MODE_PEER, so a dead or unreachable store fails the gets (UNAVAILABLE)
// instead of hanging; that mode admits only transports that detect peer failure, which on one host is tcp (over
// lo in tests: set UCX_NET_DEVICES=lo) and on clusters RDMA. A WaitAll past its timeout closes the endpoint with
// UCP_EP_CLOSE_FLAG_FORCE, which cancels what is outstanding (nothing is written into caller memory afterwards),
// and the endpoint stays broken. Endpoints close with FORCE (env.md §1: a flush-close can hang on a dead peer).
//
// Thread-safety: Server is thread-safe. An Endpoint is used by one thread at a time. Contexts are thread-safe
// (created with mt_workers_shared).
#ifndef LIVEKV_SERVICES_CHANNELS_UCX_H_
#define LIVEKV_SERVICES_CHANNELS_UCX_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace livekv::ucx {

struct Options {
  std::string transports;   // UCX_TLS for this context; "" keeps the environment's (or UCX's default)
  std::string net_devices;  // UCX_NET_DEVICES; "" keeps the environment's
};

// A UCP context.
class Context {
 public:
  // `features`: UCP_FEATURE_* bits. UNAVAILABLE when UCX cannot initialise (no usable transport).
  static absl::StatusOr<std::unique_ptr<Context>> Create(uint64_t features, const Options& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ucp_context_h get() const { return context_; }

 private:
  explicit Context(ucp_context_h c) : context_(c) {}
  ucp_context_h context_;
};

// The process-wide client context (RMA), created on first use from the environment's settings and never
// destroyed. UNAVAILABLE (remembered) when UCX cannot initialise.
absl::StatusOr<Context*> ClientContext();

// A registered memory region and its packed remote key.
class MemoryRegion {
 public:
  static absl::StatusOr<std::unique_ptr<MemoryRegion>> Map(Context* context, void* base, size_t bytes);
  ~MemoryRegion();
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  const std::string& packed_rkey() const { return rkey_; }
  void* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  MemoryRegion(Context* context, ucp_mem_h memh, void* base, size_t bytes, std::string rkey)
      : context_(context), memh_(memh), base_(base), bytes_(bytes), rkey_(std::move(rkey)) {}
  Context* const context_;
  const ucp_mem_h memh_;
  void* const base_;
  const size_t bytes_;
  const std::string rkey_;
};

// The store's side: a context, a worker that clients connect to by address, a progress thread, and the regions
// registered so far (kept until the server stops).
class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Options& options);
  ~Server();  // stops the progress thread; unregisters; destroys the worker and context
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const std::string& worker_address() const { return address_; }
  // Registers [base, base + bytes) for remote reads, once per base (later calls return the same key; a different
  // size for a known base is INVALID_ARGUMENT). Returns the packed rkey.
  absl::StatusOr<std::string> Register(void* base, size_t bytes);

 private:
  Server() = default;
  void Progress();

  std::unique_ptr<Context> context_;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  int efd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread progress_;
  absl::Mutex mu_;
  std::map<void*, std::unique_ptr<MemoryRegion>> regions_ ABSL_GUARDED_BY(mu_);
};

// The worker's side: its own UCP worker and one endpoint to a server, with unpacked remote keys.
class Endpoint {
 public:
  // UNAVAILABLE when the endpoint cannot be created (a malformed or unreachable address).
  static absl::StatusOr<std::unique_ptr<Endpoint>> Connect(Context* context, const std::string& worker_address);
  ~Endpoint();  // cancels what is outstanding; closes with FORCE
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Unpacks a key of the server's; returns its index for Get.
  absl::StatusOr<int> AddRemoteKey(const std::string& packed);

  // Starts reading `bytes` at the server's address `remote` (inside the region of key `key`) into `dst`.
  // UNAVAILABLE when the endpoint is broken or the get fails at once.
  absl::Status Get(void* dst, size_t bytes, uint64_t remote, int key);
  // Completes every Get issued since the last WaitAll. UNAVAILABLE (and the endpoint breaks) when one failed, the
  // peer failed, or `timeout` passed; then destinations hold unspecified bytes but are no longer written.
  absl::Status WaitAll(absl::Duration timeout);

  // Why the endpoint broke; OK while usable.
  absl::Status broken() const { return broken_; }

 private:
  Endpoint() = default;
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);
  // Closes the endpoint (FORCE), completing and freeing every outstanding request.
  void CloseAndDrain();

  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  std::vector<ucp_rkey_h> rkeys_;
  std::vector<void*> pending_;
  absl::Status broken_;
  ucs_status_t peer_error_ = UCS_OK;  // set by OnError (during progress, on the using thread)
};

}  // namespace livekv::ucx

#endif  // LIVEKV_SERVICES_CHANNELS_UCX_H_
