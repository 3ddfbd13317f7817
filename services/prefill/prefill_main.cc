// The prefill service: livekv_prefill --model DIR --kvstore HOST:PORT [--listen 127.0.0.1:7102].
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/logging.h"
#include "common/rpc/client.h"
#include "services/common/service_main.h"
#include "services/prefill/prefill_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7102", "gRPC address to serve on (port 0: any free port).");
ABSL_FLAG(std::string, kvstore, "127.0.0.1:7101", "Address of the KV store.");
ABSL_FLAG(std::string, model, "models/tiny", "Model directory.");
ABSL_FLAG(std::string, model_name, "", "Name sessions use for this model (default: the directory's last part).");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all).");
ABSL_FLAG(int32_t, max_queue_per_session, 8, "Appends queued per session before RESOURCE_EXHAUSTED.");
ABSL_FLAG(int32_t, max_queue_total, 64, "Appends queued overall before RESOURCE_EXHAUSTED.");

int main(int argc, char** argv) {
  livekv::InitLogging(argv[0]);
  absl::ParseCommandLine(argc, argv);
  const absl::StatusOr<livekv::ServeOptions> serve = livekv::ServeOptionsFromFlags(absl::GetFlag(FLAGS_listen));
  if (!serve.ok()) {
    std::cerr << "livekv_prefill: " << serve.status().message() << "\n";
    return 2;
  }
  livekv::CpuBackend backend(livekv::CpuBackendOptions{.num_threads = absl::GetFlag(FLAGS_threads)});
  const std::string dir = absl::GetFlag(FLAGS_model);
  absl::StatusOr<livekv::LoadedModel> model = livekv::LoadModel(dir, &backend);
  if (!model.ok()) {
    std::cerr << "livekv_prefill: " << model.status() << "\n";
    return 1;
  }
  std::string name = absl::GetFlag(FLAGS_model_name);
  if (name.empty()) name = dir.substr(dir.find_last_of('/') + 1);
  livekv::KvStoreClient store(livekv::MakeChannel(absl::GetFlag(FLAGS_kvstore)));
  livekv::PrefillWorkerOptions options;
  options.model_name = name;
  options.max_queue_per_session = absl::GetFlag(FLAGS_max_queue_per_session);
  options.max_queue_total = absl::GetFlag(FLAGS_max_queue_total);
  livekv::PrefillWorker worker(&*model, &backend, &store, options);
  livekv::ServiceMetrics metrics("prefill");
  livekv::PrefillService service(&worker, &metrics);
  return livekv::ServeUntilSignalled("livekv_prefill", *serve, {&service}, &metrics);
}
