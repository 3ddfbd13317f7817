// File: client/cli/client_flags.h
//
// Flags of the commands that talk to running services (session, append, ask, stats, up, demo), and the SDK client
// they describe.
#ifndef LIVEKV_CLIENT_CLI_CLIENT_FLAGS_H_
#define LIVEKV_CLIENT_CLI_CLIENT_FLAGS_H_

#include <memory>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/sdk/client.h"

ABSL_DECLARE_FLAG(std::string, kvstore);
ABSL_DECLARE_FLAG(std::string, prefill);
ABSL_DECLARE_FLAG(std::string, decode);
ABSL_DECLARE_FLAG(std::string, cluster_dir);
ABSL_DECLARE_FLAG(absl::Duration, timeout);
ABSL_DECLARE_FLAG(std::string, services_dir);
ABSL_DECLARE_FLAG(std::string, model);  // client/cli/generate_command.cc

namespace livekv::cli {

// --model, or the embedded model when it is empty.
std::string ModelDirFromFlags();

// Service addresses from --cluster_dir (the port files of `livekv up --dir DIR`) when given, otherwise from
// --kvstore, --prefill and --decode (comma-separated, tried in order); deadlines from --timeout.
absl::StatusOr<sdk::ClientOptions> ClientOptionsFromFlags();

absl::StatusOr<std::unique_ptr<sdk::Client>> ConnectFromFlags();

// "prefill 31.2 ms (12 prompt tokens) | recall 4.1 ms, 1.2 MiB | first token 45.0 ms | 7 tokens, 180 tokens/s".
std::string FormatTimings(const v1::Timings& t);

// "1.2 MiB".
std::string FormatBytes(int64_t bytes);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_CLIENT_FLAGS_H_
