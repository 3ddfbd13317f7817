#include "common/rpc/client.h"

#include <algorithm>
#include <random>

#include "absl/time/clock.h"

namespace livekv {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Reconnect quickly after a peer restarts (the default back-off reaches seconds).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

absl::Status RetryOnUnavailable(const RetryPolicy& policy, const std::function<absl::Status()>& attempt) {
  thread_local std::mt19937 rng(std::random_device{}());
  absl::Duration backoff = policy.initial_backoff;
  absl::Status s;
  for (int i = 0; i < policy.max_attempts; ++i) {
    s = attempt();
    if (s.code() != absl::StatusCode::kUnavailable) return s;
    if (i + 1 == policy.max_attempts) break;
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    absl::SleepFor(backoff * jitter(rng));
    backoff = std::min(policy.max_backoff, backoff * policy.multiplier);
  }
  return s;
}

}  // namespace livekv
