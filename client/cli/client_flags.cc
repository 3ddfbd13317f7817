#include "client/cli/client_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/cli/local_cluster.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, kvstore, "127.0.0.1:7101", "Address of the KV store.");
ABSL_FLAG(std::string, prefill, "127.0.0.1:7102", "Address of the prefill service.");
ABSL_FLAG(std::string, decode, "127.0.0.1:7103",
          "Addresses of decode services, comma-separated; a Generate fails over to the next when one is down.");
ABSL_FLAG(std::string, cluster_dir, "",
          "Read the service addresses from the port files of `livekv up --dir DIR` (instead of --kvstore, "
          "--prefill, --decode).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(120), "Deadline of each call to a service.");
ABSL_FLAG(std::string, services_dir, "",
          "Directory of the service binaries (livekv_kvstore, ...); default: this program's runfiles or bazel-bin.");

namespace livekv::cli {

std::string ModelDirFromFlags() {
  const std::string model = absl::GetFlag(FLAGS_model);
  return model.empty() ? "models/tiny" : model;
}

absl::StatusOr<sdk::ClientOptions> ClientOptionsFromFlags() {
  sdk::ClientOptions o;
  o.timeout = absl::GetFlag(FLAGS_timeout);
  const std::string dir = absl::GetFlag(FLAGS_cluster_dir);
  if (!dir.empty()) {
    LIVEKV_ASSIGN_OR_RETURN(ClusterAddresses a, ReadClusterAddresses(dir));
    o.kvstore = a.kvstore;
    o.prefill = a.prefill;
    o.decode = a.decode;
    return o;
  }
  o.kvstore = absl::GetFlag(FLAGS_kvstore);
  o.prefill = absl::GetFlag(FLAGS_prefill);
  for (absl::string_view d : absl::StrSplit(absl::GetFlag(FLAGS_decode), ',', absl::SkipWhitespace())) {
    o.decode.emplace_back(absl::StripAsciiWhitespace(d));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<sdk::Client>> ConnectFromFlags() {
  LIVEKV_ASSIGN_OR_RETURN(sdk::ClientOptions options, ClientOptionsFromFlags());
  return sdk::Client::Connect(options);
}

std::string FormatBytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", bytes / double(int64_t{1} << 30));
  if (bytes >= (1 << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  if (bytes >= (1 << 10)) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  return absl::StrFormat("%d B", bytes);
}

std::string FormatTimings(const v1::Timings& t) {
  std::string out =
      absl::StrFormat("prefill %.1f ms (%d prompt tokens) | recall %.1f ms, %s | first token %.1f ms", t.prefill_ms(),
                      t.prompt_tokens(), t.recall_ms(), FormatBytes(t.recall_bytes()), t.first_token_ms());
  absl::StrAppendFormat(&out, " | %d tokens, %.0f tokens/s", t.generated_tokens(), t.tokens_per_second());
  if (t.one_shot_prefill_ms() > 0) absl::StrAppendFormat(&out, " | one-shot append %.1f ms", t.one_shot_prefill_ms());
  return out;
}

}  // namespace livekv::cli
