// livekv up: the three services on this machine until Ctrl-C (client/cli/local_cluster.h).
#include <signal.h>

#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "client/cli/local_cluster.h"

ABSL_FLAG(std::string, dir, "",
          "up: directory for the services' port files and logs (default: a temporary one, removed at exit); other "
          "commands find the services with --cluster_dir DIR.");
ABSL_FLAG(int32_t, decode_replicas, 1, "up: decode services to start (clients fail over between them).");

namespace livekv::cli {

int UpCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  // Block the stop signals before any thread exists (gRPC's threads inherit the mask), then wait for them here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  LocalClusterOptions options;
  options.model_dir = ModelDirFromFlags();
  options.dir = absl::GetFlag(FLAGS_dir);
  options.services_dir = absl::GetFlag(FLAGS_services_dir);
  options.num_decode = absl::GetFlag(FLAGS_decode_replicas);
  options.threads = absl::GetFlag(FLAGS_threads);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::cerr << "error: " << cluster.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("livekv up: model %s, ready in %.1f s; port files and logs in %s\n", options.model_dir,
                               absl::ToDoubleSeconds(absl::Now() - start), (*cluster)->dir());
  for (const LocalService& s : (*cluster)->services()) {
    std::cout << absl::StrFormat("  %-9s %-16s metrics 127.0.0.1:%-6d pid %-7d log %s\n", s.name, s.address,
                                 s.metrics_port, s.pid, s.log_path);
  }
  std::cout << "use: livekv --cluster_dir " << (*cluster)->dir()
            << " session create | append ID FILE | ask ID \"question\" | stats\n"
            << "Ctrl-C stops the services\n"
            << std::flush;

  int exit_code = 0;
  while (true) {
    const timespec poll = {1, 0};
    const int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig == SIGINT || sig == SIGTERM) {
      std::cout << "\nstopping...\n" << std::flush;
      break;
    }
    absl::Status alive = (*cluster)->CheckAlive();
    if (!alive.ok()) {
      std::cerr << "error: " << alive << "\nstopping the other services\n";
      exit_code = 1;
      break;
    }
  }
  absl::Status stopped = (*cluster)->Stop();
  if (!stopped.ok()) {
    std::cerr << "error: " << stopped << "\n";
    return 1;
  }
  if (exit_code == 0) std::cout << "stopped; every service exited cleanly\n";
  return exit_code;
}

}  // namespace livekv::cli
