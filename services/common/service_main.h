// File: services/common/service_main.h
//
// What every livekv service's main() does the same way: serve gRPC on --listen (reporting the bound port to
// --port_file when given, so a parent can start it on port 0), serve /metrics on --metrics_listen, and on SIGTERM
// or SIGINT shut down gracefully (health NOT_SERVING, in-flight calls get --shutdown_grace_ms, then exit 0).
// The flags every service has are defined here once (--port_file, --metrics_listen, --metrics_port_file,
// --shutdown_grace_ms); each main defines --listen with its own default port:
//
//   ABSL_FLAG(std::string, listen, "127.0.0.1:7101", "gRPC address to serve on (port 0: any free port).");
//   ...
//   absl::StatusOr<ServeOptions> serve = ServeOptionsFromFlags(absl::GetFlag(FLAGS_listen));
//   if (!serve.ok()) { LOG(ERROR) << serve.status(); return 2; }
//   return ServeUntilSignalled("livekv_kvstore", *serve, {&service, &health}, &metrics);
#ifndef LIVEKV_SERVICES_COMMON_SERVICE_MAIN_H_
#define LIVEKV_SERVICES_COMMON_SERVICE_MAIN_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/metrics/metrics.h"

namespace livekv {

struct ServeOptions {
  std::string listen;             // "127.0.0.1:0"
  std::string port_file;          // "" = don't write
  std::string metrics_listen;     // "" = no /metrics
  std::string metrics_port_file;
  int64_t shutdown_grace_ms = 5000;
};

// `listen` and the shared flags; INVALID_ARGUMENT for a negative --shutdown_grace_ms.
absl::StatusOr<ServeOptions> ServeOptionsFromFlags(const std::string& listen);

// Runs until SIGTERM/SIGINT; returns the process exit code. `on_shutdown` runs after the server stopped.
int ServeUntilSignalled(const std::string& name, const ServeOptions& options,
                        const std::vector<grpc::Service*>& services, ServiceMetrics* metrics,
                        const std::function<void()>& on_shutdown = nullptr);

}  // namespace livekv

#endif  // LIVEKV_SERVICES_COMMON_SERVICE_MAIN_H_
