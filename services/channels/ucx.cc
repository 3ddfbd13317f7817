#include "services/channels/ucx.h"

#include <poll.h>

#include <cstdlib>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace livekv::ucx {
namespace {

// Peer and link failures are UNAVAILABLE (another channel may work); misuse is INTERNAL.
absl::Status UcsError(absl::string_view what, ucs_status_t status) {
  const std::string message = absl::StrCat(what, ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CANCELED:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NO_RESOURCE:
      return absl::UnavailableError(message);
    case UCS_ERR_NO_MEMORY:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_INVALID_PARAM:
      return absl::InvalidArgumentError(message);
    default:
      return absl::UnavailableError(message);
  }
}

ucs_status_t WaitRequest(ucp_worker_h worker, void* request) {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  ucs_status_t s;
  while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS) ucp_worker_progress(worker);
  ucp_request_free(request);
  return s;
}

}  // namespace

// ---- Context ----

absl::StatusOr<std::unique_ptr<Context>> Context::Create(uint64_t features, const Options& options) {
  // RMA over TCP moves data in segments of TX_SEG_SIZE (UCX's default 8 KiB): with 256 KiB segments loopback gets
  // of 256 KiB runs went from ~1.5 to ~5 GB/s (bench/channel_bench). Transport settings are read from the
  // environment; values the user set are kept.
  setenv("UCX_TCP_TX_SEG_SIZE", "256k", /*overwrite=*/0);
  setenv("UCX_TCP_RX_SEG_SIZE", "1m", /*overwrite=*/0);
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcsError("ucp_config_read", s);
  if (!options.transports.empty() && (s = ucp_config_modify(config, "TLS", options.transports.c_str())) != UCS_OK) {
    ucp_config_release(config);
    return absl::InvalidArgumentError(absl::StrCat("UCX transports \"", options.transports, "\": ",
                                                   ucs_status_string(s)));
  }
  if (!options.net_devices.empty() &&
      (s = ucp_config_modify(config, "NET_DEVICES", options.net_devices.c_str())) != UCS_OK) {
    ucp_config_release(config);
    return absl::InvalidArgumentError(absl::StrCat("UCX net devices \"", options.net_devices, "\": ",
                                                   ucs_status_string(s)));
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = features;
  params.mt_workers_shared = 1;
  params.name = "livekv";
  ucp_context_h context = nullptr;
  s = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (s != UCS_OK) return UcsError("ucp_init", s);
  return std::unique_ptr<Context>(new Context(context));
}

Context::~Context() { ucp_cleanup(context_); }

absl::StatusOr<Context*> ClientContext() {
  static absl::once_flag once;
  static absl::StatusOr<std::unique_ptr<Context>>* context = nullptr;
  absl::call_once(once, [] {
    context = new absl::StatusOr<std::unique_ptr<Context>>(Context::Create(UCP_FEATURE_RMA, Options{}));
  });
  if (!context->ok()) return context->status();
  return context->value().get();
}

// ---- MemoryRegion ----

absl::StatusOr<std::unique_ptr<MemoryRegion>> MemoryRegion::Map(Context* context, void* base, size_t bytes) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = base;
  params.length = bytes;
  ucp_mem_h memh = nullptr;
  ucs_status_t s = ucp_mem_map(context->get(), &params, &memh);
  if (s != UCS_OK) return UcsError(absl::StrCat("ucp_mem_map of ", bytes, " bytes"), s);
  void* packed = nullptr;
  size_t packed_size = 0;
  s = ucp_rkey_pack(context->get(), memh, &packed, &packed_size);
  if (s != UCS_OK) {
    ucp_mem_unmap(context->get(), memh);
    return UcsError("ucp_rkey_pack", s);
  }
  std::string rkey(static_cast<const char*>(packed), packed_size);
  ucp_rkey_buffer_release(packed);
  return std::unique_ptr<MemoryRegion>(new MemoryRegion(context, memh, base, bytes, std::move(rkey)));
}

MemoryRegion::~MemoryRegion() {
  const ucs_status_t s = ucp_mem_unmap(context_->get(), memh_);
  if (s != UCS_OK) LOG(WARNING) << "ucp_mem_unmap: " << ucs_status_string(s);
}

// ---- Server ----

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Options& options) {
  std::unique_ptr<Server> server(new Server());
  auto context = Context::Create(UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP, options);
  if (!context.ok()) return context.status();
  server->context_ = std::move(*context);
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucs_status_t s = ucp_worker_create(server->context_->get(), &wp, &server->worker_);
  if (s != UCS_OK) return UcsError("ucp_worker_create", s);
  ucp_address_t* address = nullptr;
  size_t length = 0;
  s = ucp_worker_get_address(server->worker_, &address, &length);
  if (s != UCS_OK) return UcsError("ucp_worker_get_address", s);
  server->address_.assign(reinterpret_cast<const char*>(address), length);
  ucp_worker_release_address(server->worker_, address);
  s = ucp_worker_get_efd(server->worker_, &server->efd_);
  if (s != UCS_OK) return UcsError("ucp_worker_get_efd", s);
  server->progress_ = std::thread([raw = server.get()] { raw->Progress(); });
  return server;
}

void Server::Progress() {
  while (!stop_.load(std::memory_order_acquire)) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    const ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (s != UCS_OK) {
      LOG(ERROR) << "ucp_worker_arm: " << ucs_status_string(s) << "; polling instead";
    }
    pollfd p{efd_, POLLIN, 0};
    // The timeout only bounds how long a missed wake-up could delay progress; Stop signals the worker.
    ::poll(&p, 1, 100);
  }
}

Server::~Server() {
  if (progress_.joinable()) {
    stop_.store(true, std::memory_order_release);
    ucp_worker_signal(worker_);
    progress_.join();
  }
  {
    absl::MutexLock lock(&mu_);
    regions_.clear();
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  context_.reset();
}

absl::StatusOr<std::string> Server::Register(void* base, size_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(base);
  if (it != regions_.end()) {
    if (it->second->bytes() != bytes) {
      return absl::InvalidArgumentError(absl::StrCat("UCX region at ", reinterpret_cast<uintptr_t>(base),
                                                     " is registered with ", it->second->bytes(), " bytes, not ",
                                                     bytes));
    }
    return it->second->packed_rkey();
  }
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = MemoryRegion::Map(context_.get(), base, bytes);
  if (!region.ok()) return region.status();
  std::string rkey = (*region)->packed_rkey();
  regions_.emplace(base, std::move(*region));
  return rkey;
}

// ---- Endpoint ----

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Connect(Context* context, const std::string& worker_address) {
  if (worker_address.empty()) return absl::InvalidArgumentError("empty UCX worker address");
  std::unique_ptr<Endpoint> e(new Endpoint());
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucs_status_t s = ucp_worker_create(context->get(), &wp, &e->worker_);
  if (s != UCS_OK) return UcsError("ucp_worker_create", s);
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &Endpoint::OnError;
  ep.err_handler.arg = e.get();
  s = ucp_ep_create(e->worker_, &ep, &e->ep_);
  if (s != UCS_OK) {
    e->ep_ = nullptr;
    return UcsError("connecting to the store's UCX worker", s);
  }
  return e;
}

void Endpoint::OnError(void* arg, ucp_ep_h, ucs_status_t status) {
  static_cast<Endpoint*>(arg)->peer_error_ = status;
}

absl::StatusOr<int> Endpoint::AddRemoteKey(const std::string& packed) {
  if (!broken_.ok()) return broken_;
  ucp_rkey_h rkey = nullptr;
  const ucs_status_t s = ucp_ep_rkey_unpack(ep_, packed.data(), &rkey);
  if (s != UCS_OK) return UcsError("unpacking a UCX remote key of the store", s);
  rkeys_.push_back(rkey);
  return static_cast<int>(rkeys_.size()) - 1;
}

absl::Status Endpoint::Get(void* dst, size_t bytes, uint64_t remote, int key) {
  if (!broken_.ok()) return broken_;
  if (peer_error_ != UCS_OK) {
    CloseAndDrain();
    broken_ = UcsError("the store's UCX endpoint failed", peer_error_);
    return broken_;
  }
  ucp_request_param_t param{};
  void* request = ucp_get_nbx(ep_, dst, bytes, remote, rkeys_.at(key), &param);
  if (request == nullptr) return absl::OkStatus();
  if (UCS_PTR_IS_ERR(request)) {
    CloseAndDrain();
    broken_ = UcsError(absl::StrCat("UCX get of ", bytes, " bytes"), UCS_PTR_STATUS(request));
    return broken_;
  }
  pending_.push_back(request);
  return absl::OkStatus();
}

absl::Status Endpoint::WaitAll(absl::Duration timeout) {
  if (!broken_.ok()) return broken_;
  const absl::Time deadline = absl::Now() + timeout;
  ucs_status_t failed = UCS_OK;
  size_t done = 0;
  int spins = 0;
  for (; done < pending_.size(); ++done) {
    ucs_status_t s;
    while ((s = ucp_request_check_status(pending_[done])) == UCS_INPROGRESS) {
      if (peer_error_ != UCS_OK) break;
      if (ucp_worker_progress(worker_) == 0 && ++spins % 1024 == 0 && absl::Now() > deadline) break;
    }
    if (s == UCS_INPROGRESS) {
      failed = peer_error_ != UCS_OK ? peer_error_ : UCS_ERR_TIMED_OUT;
      break;
    }
    ucp_request_free(pending_[done]);
    if (s != UCS_OK) {
      failed = s;
      ++done;
      break;
    }
  }
  pending_.erase(pending_.begin(), pending_.begin() + done);
  if (failed == UCS_OK && peer_error_ != UCS_OK) failed = peer_error_;
  if (failed == UCS_OK) return absl::OkStatus();
  CloseAndDrain();
  broken_ = failed == UCS_ERR_TIMED_OUT
                ? absl::UnavailableError(absl::StrCat("UCX gets from the store did not complete within ",
                                                      absl::FormatDuration(timeout)))
                : UcsError("UCX get from the store", failed);
  return broken_;
}

void Endpoint::CloseAndDrain() {
  if (ep_ != nullptr) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    // FORCE completes every outstanding operation of the endpoint (cancelled) without talking to the peer.
    WaitRequest(worker_, ucp_ep_close_nbx(ep_, &param));
    ep_ = nullptr;
  }
  for (void* request : pending_) WaitRequest(worker_, request);
  pending_.clear();
  // After a forced close; the gets that used them are complete.
  for (ucp_rkey_h k : rkeys_) ucp_rkey_destroy(k);
  rkeys_.clear();
}

Endpoint::~Endpoint() {
  if (ep_ != nullptr && pending_.empty()) {
    // The normal order: keys before their endpoint.
    for (ucp_rkey_h k : rkeys_) ucp_rkey_destroy(k);
    rkeys_.clear();
  }
  CloseAndDrain();
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
}

}  // namespace livekv::ucx
