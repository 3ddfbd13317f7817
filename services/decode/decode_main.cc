// The decode service: livekv_decode --model DIR --kvstore HOST:PORT --prefill HOST:PORT [--listen ...]
// [--kv_channel shm|ucx|grpc].
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/logging.h"
#include "common/rpc/client.h"
#include "services/common/service_main.h"
#include "services/decode/decode_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7103", "gRPC address to serve on (port 0: any free port).");
ABSL_FLAG(std::string, kvstore, "127.0.0.1:7101", "Address of the KV store.");
ABSL_FLAG(std::string, prefill, "127.0.0.1:7102", "Address of the prefill service (one-shot prompts, append_turn).");
ABSL_FLAG(std::string, model, "models/tiny", "Model directory.");
ABSL_FLAG(std::string, model_name, "", "Name sessions use for this model (default: the directory's last part).");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all).");
ABSL_FLAG(int32_t, one_shot_budget, 1024, "Token budget of one-shot prompts' temporary sessions (clusterkv).");
ABSL_FLAG(std::string, kv_channel, "",
          "How recalled KV bytes move: \"\" (the fastest the store offers: shm on its host, else ucx, else grpc), "
          "or force shm, ucx or grpc. A channel that fails mid-call falls back to the next.");

int main(int argc, char** argv) {
  livekv::InitLogging(argv[0]);
  absl::ParseCommandLine(argc, argv);
  const absl::StatusOr<livekv::ServeOptions> serve = livekv::ServeOptionsFromFlags(absl::GetFlag(FLAGS_listen));
  if (!serve.ok()) {
    std::cerr << "livekv_decode: " << serve.status().message() << "\n";
    return 2;
  }
  livekv::CpuBackend backend(livekv::CpuBackendOptions{.num_threads = absl::GetFlag(FLAGS_threads)});
  const std::string dir = absl::GetFlag(FLAGS_model);
  absl::StatusOr<livekv::LoadedModel> model = livekv::LoadModel(dir, &backend);
  if (!model.ok()) {
    std::cerr << "livekv_decode: " << model.status() << "\n";
    return 1;
  }
  std::string name = absl::GetFlag(FLAGS_model_name);
  if (name.empty()) name = dir.substr(dir.find_last_of('/') + 1);
  livekv::KvStoreClient store(livekv::MakeChannel(absl::GetFlag(FLAGS_kvstore)));
  livekv::PrefillClient prefill(livekv::MakeChannel(absl::GetFlag(FLAGS_prefill)));
  livekv::DecodeWorkerOptions options;
  options.model_name = name;
  options.one_shot_policy.budget = absl::GetFlag(FLAGS_one_shot_budget);
  options.channel.force = absl::GetFlag(FLAGS_kv_channel);
  if (const std::string& c = options.channel.force; c != "" && c != "shm" && c != "ucx" && c != "grpc") {
    std::cerr << "livekv_decode: --kv_channel must be empty, shm, ucx or grpc, saw \"" << c << "\"\n";
    return 2;
  }
  livekv::DecodeWorker worker(&*model, &backend, &store, &prefill, options);
  livekv::ServiceMetrics metrics("decode");
  livekv::DecodeService service(&worker, &metrics);
  return livekv::ServeUntilSignalled("livekv_decode", *serve, {&service}, &metrics);
}
