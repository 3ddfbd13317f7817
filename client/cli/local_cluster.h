// File: client/cli/local_cluster.h
//
// The three livekv services as child processes on this machine: what `livekv up` and `livekv demo` run, and what
// integration tests start. Each service binds 127.0.0.1:0 and reports its ports through files in `dir`
// (<name>.port, <name>.metrics_port; `ReadClusterAddresses` reads them back for other commands); its output goes
// to <dir>/<name>.log.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<LocalCluster> cluster, LocalCluster::Start(LocalClusterOptions()));
//   sdk::ClientOptions client = cluster->client_options();
//   ...
//   LIVEKV_RETURN_IF_ERROR(cluster->Stop());  // SIGTERM, and every service must exit 0
//
// Lifetime: the children are sent SIGTERM when the cluster is destroyed, and (PR_SET_PDEATHSIG) when the thread
// that started them exits — so start a cluster from a thread that lives as long as it, such as main().
// Thread-safety: thread-compatible.
#ifndef LIVEKV_CLIENT_CLI_LOCAL_CLUSTER_H_
#define LIVEKV_CLIENT_CLI_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/sdk/options.h"

namespace livekv::cli {

struct LocalClusterOptions {
  std::string model_dir = "models/tiny";  // --model of prefill and decode (relative to the working directory)
  // Port files and logs. Empty: a new directory under $TEST_TMPDIR, $TMPDIR or /tmp, removed by a clean Stop().
  std::string dir;
  // The directory holding the service binaries (livekv_kvstore, ... or services/<name>/livekv_<name>); empty:
  // FindServiceBinary's search.
  std::string services_dir;
  int num_decode = 1;  // decode services (more than one: for failover)
  int threads = 0;     // --threads of prefill and decode; 0: their default
  // Extra flags for each service, e.g. {"--pool_bytes=1073741824"}.
  std::vector<std::string> kvstore_flags, prefill_flags, decode_flags;
  absl::Duration start_timeout = absl::Seconds(60);  // for each service to report its port and be SERVING
  absl::Duration stop_timeout = absl::Seconds(30);   // for each service to exit after SIGTERM (then SIGKILL)
};

// One running service.
struct LocalService {
  std::string name;  // "kvstore", "prefill", "decode", "decode-1", ...
  std::string binary;
  std::string address;  // "127.0.0.1:<port>"
  int port = 0;
  int metrics_port = 0;  // 0: not reported
  std::string log_path;
  pid_t pid = -1;
  bool exited = false;  // reaped; exit_status is valid
  int exit_status = 0;  // as waitpid reports it
};

class LocalCluster {
 public:
  // Starts the store, then prefill, then decode (each given the addresses of those before it), waiting for each
  // to write its port file and answer grpc.health.v1 with SERVING. NOT_FOUND when a binary cannot be found (naming
  // where it looked); DEADLINE_EXCEEDED when a service is not ready within start_timeout; FAILED_PRECONDITION
  // when one exits early (with the end of its log). Whatever was started is stopped on failure.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);

  ~LocalCluster();  // Stop(), ignoring its status
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const LocalService& kvstore() const { return services_[0]; }
  const LocalService& prefill() const { return services_[1]; }
  // Decode services, in order.
  std::vector<const LocalService*> decode() const;
  const std::vector<LocalService>& services() const { return services_; }
  const std::string& dir() const { return dir_; }

  // SDK options addressing this cluster.
  sdk::ClientOptions client_options() const;

  // OK while every service runs; FAILED_PRECONDITION naming one that exited (and how).
  absl::Status CheckAlive();

  // Sends `signal` to the service called `name` and, for SIGKILL, waits for it to die (fault-injection tests).
  // NOT_FOUND for an unknown name.
  absl::Status Kill(const std::string& name, int signal);

  // Sends SIGTERM to the services in reverse start order, waiting for each to exit (SIGKILL after
  // stop_timeout). OK when every one exited 0; INTERNAL naming those that did not, with their log paths. A second
  // call returns the first call's status. Close clients first: a service waits out its whole shutdown grace
  // (5 s by default) while a client holds a connection to it open.
  absl::Status Stop();

 private:
  LocalCluster(const LocalClusterOptions& options, std::string dir, bool own_dir);

  absl::Status StartService(const std::string& name, const std::vector<std::string>& flags);
  absl::Status WaitReady(LocalService* service, absl::Time deadline);
  // Reaps `service` if it exited; true if it has.
  bool Reap(LocalService* service);

  const LocalClusterOptions options_;
  const std::string dir_;
  const bool own_dir_;
  bool keep_dir_ = false;  // a start failed: its error names logs in dir_
  std::vector<LocalService> services_;
  bool stopped_ = false;
  absl::Status stop_status_;
};

// Where the binary of `service` ("kvstore", "prefill", "decode") is: in `services_dir` when given; otherwise in
// the runfiles of this program ($RUNFILES_DIR, $TEST_SRCDIR, <program>.runfiles), beside it in bazel-bin
// (bazel-bin/client/cli/livekv -> bazel-bin/services/...), or under ./bazel-bin. NOT_FOUND listing every place
// it looked.
absl::StatusOr<std::string> FindServiceBinary(const std::string& service, const std::string& services_dir = "");

// The addresses a cluster started with `dir` reported (for commands run beside `livekv up --dir DIR`).
struct ClusterAddresses {
  std::string kvstore, prefill;
  std::vector<std::string> decode;
};
// NOT_FOUND naming the missing port file.
absl::StatusOr<ClusterAddresses> ReadClusterAddresses(const std::string& dir);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_LOCAL_CLUSTER_H_
