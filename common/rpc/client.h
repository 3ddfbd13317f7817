// File: common/rpc/client.h
//
// Client-side conventions: every call has a deadline, and calls that may be retried are retried with
// exponential back-off and jitter while the peer is UNAVAILABLE (restarting) — never on other codes.
#ifndef LIVEKV_COMMON_RPC_CLIENT_H_
#define LIVEKV_COMMON_RPC_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace livekv {

// An insecure channel to `address` allowing 64 MiB messages.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

// Sets the context's deadline to now + timeout.
void SetDeadline(grpc::ClientContext* context, absl::Duration timeout);

struct RetryPolicy {
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  double multiplier = 2.0;
};

// Runs `attempt` until it returns something other than UNAVAILABLE, or attempts run out; sleeps between tries.
absl::Status RetryOnUnavailable(const RetryPolicy& policy, const std::function<absl::Status()>& attempt);

}  // namespace livekv

#endif  // LIVEKV_COMMON_RPC_CLIENT_H_
