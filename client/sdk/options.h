// File: client/sdk/options.h
//
// The plain types of the C++ SDK (client/sdk/client.h): how a client reaches the services, how a session is
// created, what a Generate call asks for, and what it returns.
#ifndef LIVEKV_CLIENT_SDK_OPTIONS_H_
#define LIVEKV_CLIENT_SDK_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "engine/sampler.h"
#include "kvcache/policy_options.h"
#include "proto/livekv/v1/decode.pb.h"

namespace livekv::sdk {

struct ClientOptions {
  // "host:port" of each service. A service left empty cannot be called (FAILED_PRECONDITION naming it).
  std::string kvstore;
  std::string prefill;
  // One or more decode services, tried in order when one is UNAVAILABLE (see Client::Generate).
  std::vector<std::string> decode;
  // Deadline of each RPC attempt (a Generate attempt included: the whole stream must end by then).
  absl::Duration timeout = absl::Seconds(120);
  // Attempts and back-off for calls that fail with UNAVAILABLE; no other code is retried. For Generate,
  // max_attempts counts attempts over all decode addresses.
  RetryPolicy retry;
};

struct SessionOptions {
  // The model whose KV the session holds: its config.json gives the KV geometry (layers, KV heads, head_dim).
  std::string model_dir = "models/tiny";
  // The name the services know the model by; empty: model_dir's last path component (e.g. "tiny").
  std::string model_name;
  // The KV-cache policy; kv_dtype, sink and page_tokens also set the session's geometry.
  PolicyOptions policy;
  // Idle time after which the store deletes the session; zero: the store's default.
  absl::Duration ttl = absl::ZeroDuration();
  std::string tenant;      // "" is the default tenant
  std::string session_id;  // empty: the client picks a random id (so a retried create is idempotent)
};

// A piece of generated text and the token ids that completed it.
struct Piece {
  std::vector<int32_t> ids;
  std::string text;
};

struct GenerateRequest {
  std::string session_id;  // empty: a one-shot prompt (prefilled into a temporary session)
  std::string prompt;
  int max_tokens = 64;
  // Greedy by default. Sampling with temperature > 0 is still deterministic for a fixed seed, which is what
  // lets a call resume on another decode service after a failure.
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop when the text ends with one of these
  bool append_turn = false;       // append prompt + answer to the session after generating
  bool add_bos = false;           // the prompt starts a sequence
};

struct GenerateResult {
  std::string text;  // everything delivered, concatenated
  std::vector<int32_t> ids;
  std::string finish_reason;  // "stop", "length", "eos"
  v1::Timings timings;        // of the attempt that finished
  int retries = 0;            // attempts re-issued after UNAVAILABLE
};

}  // namespace livekv::sdk

#endif  // LIVEKV_CLIENT_SDK_OPTIONS_H_
