#include "services/common/service_main.h"

#include <signal.h>

#include <iostream>

#include <grpc/grpc.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/rpc/server.h"

ABSL_FLAG(std::string, port_file, "", "If set, the bound gRPC port is written here once serving.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:0", "Address of the Prometheus /metrics endpoint (empty: none).");
ABSL_FLAG(std::string, metrics_port_file, "", "If set, the bound metrics port is written here.");
ABSL_FLAG(int64_t, shutdown_grace_ms, 5000, "On SIGTERM/SIGINT, how long in-flight calls may take to finish.");

namespace livekv {

absl::StatusOr<ServeOptions> ServeOptionsFromFlags(const std::string& listen) {
  ServeOptions options;
  options.listen = listen;
  options.port_file = absl::GetFlag(FLAGS_port_file);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics_port_file = absl::GetFlag(FLAGS_metrics_port_file);
  options.shutdown_grace_ms = absl::GetFlag(FLAGS_shutdown_grace_ms);
  if (options.shutdown_grace_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shutdown_grace_ms must be >= 0, saw ", options.shutdown_grace_ms));
  }
  return options;
}

int ServeUntilSignalled(const std::string& name, const ServeOptions& options,
                        const std::vector<grpc::Service*>& services, ServiceMetrics* metrics,
                        const std::function<void()>& on_shutdown) {
  // Block the signals in every thread (gRPC's included, which inherit the mask) and wait for them here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Hold one gRPC library reference until the process exits, so that destroying the server below does not run
  // gRPC's global teardown: in gRPC 1.51 that joins the executor thread, which may sit in a 10 s poll after the
  // calls of idle clients (connections that never read the GOAWAY) were cancelled at the end of the grace; the exit
  // then took 10 s more than --shutdown_grace_ms about half the time. The process is ending anyway.
  grpc_init();

  GrpcServer server;
  absl::Status s = server.Start(options.listen, services);
  if (!s.ok()) {
    LOG(ERROR) << name << ": " << s;
    return 1;
  }
  if (!options.port_file.empty()) {
    s = WritePortFile(options.port_file, server.port());
    if (!s.ok()) {
      LOG(ERROR) << name << ": " << s;
      return 1;
    }
  }
  if (metrics != nullptr && !options.metrics_listen.empty()) {
    s = metrics->Serve(options.metrics_listen);
    if (!s.ok()) {
      LOG(ERROR) << name << ": " << s;
      return 1;
    }
    if (!options.metrics_port_file.empty()) {
      s = WritePortFile(options.metrics_port_file, metrics->port());
      if (!s.ok()) LOG(WARNING) << name << ": " << s;
    }
  }
  LOG(INFO) << name << " serving on " << server.address()
            << (metrics != nullptr && metrics->port() > 0 ? ", metrics on port " + std::to_string(metrics->port())
                                                          : std::string());
  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << name << ": signal " << sig << ", shutting down";
  server.Shutdown(absl::Milliseconds(options.shutdown_grace_ms));
  if (on_shutdown) on_shutdown();
  return 0;
}

}  // namespace livekv
