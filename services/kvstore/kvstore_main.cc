// livekv_kvstore: the KV-store service (ARCHITECTURE.md §2). Serves proto/livekv/v1/kvstore.proto, the standard
// health service and reflection on --listen, and Prometheus metrics on --metrics_listen.
//
//   livekv_kvstore --listen 127.0.0.1:0 --port_file /tmp/kv.port --pool_bytes 8589934592
//
// Data plane (KvStore.OpenChannel, services/kvstore/data_plane.h): by default the pools live in POSIX
// shared-memory segments ("/livekv-<pid>-<random>-<n>", mode 0600; --shm_arena) that same-host workers map
// read-only, pre-faulted in the background (--shm_prefault), and a UCX worker serves RMA reads of them (--ucx;
// UCX reads UCX_TLS / UCX_NET_DEVICES from the environment: set UCX_NET_DEVICES=lo to stay on loopback). At start
// the store removes segments that crashed stores left in /dev/shm (--shm_remove_stale).
//
// Tiers (session_store.h, "Tiers and prefetch"), with --cold_dir: a session idle for --cold_after_ms has its cluster
// runs spilled to a file there and their memory released; prefetch and requests bring them back. Off by default:
// see cold_tier.h for why it must stay off where readers pin the arena.
//
// SIGTERM or SIGINT: stop accepting calls, give in-flight calls --shutdown_grace_ms to finish, exit 0.
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "common/allocator.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/shm/shm_arena.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "services/common/service_main.h"
#include "services/kvstore/cold_tier.h"
#include "services/kvstore/data_plane.h"
#include "services/kvstore/kvstore_service.h"
#include "services/kvstore/session_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7101", "gRPC address to serve on (port 0: any free port)");
ABSL_FLAG(int64_t, pool_bytes, int64_t{4} << 30, "capacity of each KV page pool (one per page size), bytes");
ABSL_FLAG(int64_t, default_ttl_seconds, 3600, "idle time after which a session expires, when it names none; 0: never");
ABSL_FLAG(int64_t, max_sessions_per_tenant, 1000, "sessions a tenant may hold; 0: no limit");
ABSL_FLAG(int64_t, max_bytes_per_tenant, 0, "KV page bytes a tenant may hold; 0: no limit");
ABSL_FLAG(int64_t, lease_ttl_ms, 30000, "lease lifetime when the holder names none");
ABSL_FLAG(int64_t, append_timeout_ms, 60000, "time to commit an append when the writer names none");
ABSL_FLAG(int64_t, reap_interval_ms, 1000, "how often expired sessions, leases and appends are removed");
ABSL_FLAG(bool, shm_arena, true, "keep the KV pools in POSIX shared memory, for same-host workers to map");
ABSL_FLAG(std::string, shm_prefault, "background",
          "when to fault in a shared-memory pool: sync (before the first session of its page size is created), "
          "background (on a thread, the pool usable meanwhile) or none (on first touch)");
ABSL_FLAG(std::string, shm_prefix, "livekv", "shared-memory segment names start with /<prefix>-<pid>-");
ABSL_FLAG(bool, shm_remove_stale, true, "at start, remove /dev/shm segments of this prefix whose creator is gone");
ABSL_FLAG(bool, ucx, true, "serve the pools to UCX (RMA) readers; off, or if UCX cannot start: shm and gRPC only");
ABSL_FLAG(std::string, cold_dir, "",
          "directory of the cold tier's (unlinked) spill file; \"\" (the default): no cold tier, every run stays in "
          "memory. Not with readers that pin the arena's pages (RDMA registration, cudaHostRegister of a worker's "
          "mapping): services/kvstore/cold_tier.h");
ABSL_FLAG(int64_t, cold_after_ms, 600000,
          "idle time (no lease, no append) after which a session's cluster runs move to the cold tier");
ABSL_FLAG(std::string, ucx_transports, "", "UCX_TLS for the store's UCX context (\"\": the environment's)");

namespace livekv {
namespace {

int Run() {
  // ServeUntilSignalled takes SIGTERM/SIGINT synchronously; block them before any thread (the reaper) starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"pool_bytes", absl::GetFlag(FLAGS_pool_bytes)},
                                    {"lease_ttl_ms", absl::GetFlag(FLAGS_lease_ttl_ms)},
                                    {"append_timeout_ms", absl::GetFlag(FLAGS_append_timeout_ms)},
                                    {"reap_interval_ms", absl::GetFlag(FLAGS_reap_interval_ms)}}) {
    if (value <= 0) {
      LOG(ERROR) << "--" << name << " must be positive, saw " << value;
      return 2;
    }
  }
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"default_ttl_seconds", absl::GetFlag(FLAGS_default_ttl_seconds)},
        {"max_sessions_per_tenant", absl::GetFlag(FLAGS_max_sessions_per_tenant)},
        {"max_bytes_per_tenant", absl::GetFlag(FLAGS_max_bytes_per_tenant)}}) {
    if (value < 0) {
      LOG(ERROR) << "--" << name << " must be >= 0, saw " << value;
      return 2;
    }
  }
  SessionStore::Options options;
  options.pool_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_pool_bytes));
  const int64_t ttl = absl::GetFlag(FLAGS_default_ttl_seconds);
  options.default_ttl = ttl == 0 ? absl::InfiniteDuration() : absl::Seconds(ttl);
  options.max_sessions_per_tenant = absl::GetFlag(FLAGS_max_sessions_per_tenant);
  options.max_bytes_per_tenant = absl::GetFlag(FLAGS_max_bytes_per_tenant);
  options.default_lease_ttl = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ttl_ms));
  options.default_append_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_append_timeout_ms));
  std::unique_ptr<ShmArena> arena;
  if (absl::GetFlag(FLAGS_shm_arena)) {
    absl::StatusOr<ShmArena::Prefault> prefault = ParsePrefault(absl::GetFlag(FLAGS_shm_prefault));
    if (!prefault.ok()) {
      LOG(ERROR) << "--shm_prefault: " << prefault.status().message();
      return 2;
    }
    if (absl::GetFlag(FLAGS_shm_remove_stale)) RemoveStaleSegments(absl::GetFlag(FLAGS_shm_prefix));
    absl::StatusOr<std::unique_ptr<ShmArena>> created = ShmArena::Create({absl::GetFlag(FLAGS_shm_prefix), *prefault});
    if (!created.ok()) {
      LOG(ERROR) << "--shm_prefix: " << created.status().message();
      return 2;
    }
    arena = std::move(*created);
  }
  std::unique_ptr<ColdTier> cold_tier;
  if (!absl::GetFlag(FLAGS_cold_dir).empty()) {
    absl::StatusOr<std::unique_ptr<ColdTier>> created = ColdTier::Create(absl::GetFlag(FLAGS_cold_dir));
    if (created.ok()) {
      cold_tier = std::move(*created);
      options.cold_tier = cold_tier.get();
      options.cold_after = absl::Milliseconds(absl::GetFlag(FLAGS_cold_after_ms));
    } else {
      LOG(WARNING) << "--cold_dir: " << created.status().message() << "; running without a cold tier";
    }
  }
  // Destroyed in reverse: the service, the data plane (UCX unregisters the pools), the store (pools return their
  // arenas), the arena, the cold tier.
  SessionStore store(options, Clock::Real(), arena.get());
  DataPlane::Options plane_options;
  plane_options.shm = arena.get();
  plane_options.ucx = absl::GetFlag(FLAGS_ucx);
  plane_options.ucx_options.transports = absl::GetFlag(FLAGS_ucx_transports);
  DataPlane data_plane(plane_options);

  ServiceMetrics metrics("kvstore");
  KvStoreService::Options service_options;
  service_options.data_plane = &data_plane;
  KvStoreService service(&store, &metrics, service_options);
  store.StartReaper(absl::Milliseconds(absl::GetFlag(FLAGS_reap_interval_ms)));
  const absl::StatusOr<ServeOptions> serve = ServeOptionsFromFlags(absl::GetFlag(FLAGS_listen));
  if (!serve.ok()) {
    LOG(ERROR) << serve.status().message();
    return 2;
  }
  return ServeUntilSignalled("livekv_kvstore", *serve, {&service}, &metrics, [&] { store.StopReaper(); });
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  livekv::InitLogging(argv[0]);
  absl::SetProgramUsageMessage("livekv_kvstore [--listen host:port] [--pool_bytes N] ...; --helpfull for all flags");
  absl::ParseCommandLine(argc, argv);
  return livekv::Run();
}
