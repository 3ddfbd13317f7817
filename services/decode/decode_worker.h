// File: services/decode/decode_worker.h
//
// The decode service's work, independent of gRPC. Generate() answers a prompt over a stored session:
//   1. mirror the session's index locally under a lease (blocks are recalled only when a layer selects them:
//      RemoteBlockFetcher), with the session's policy;
//   2. prefill the prompt against the session (dense by default, as the policy says), then decode step by step,
//      each step attending only to what the policy selects;
//   3. stream text as it completes; stop at an end-of-sequence token, a stop string, the token limit, or when
//      the caller cancels (checked before every model step);
//   4. always release the lease and free the mirror, however the call ends; optionally append the turn (prompt and
//      answer) to the session through the prefill service.
// Without a session, the prompt goes through the prefill service into a temporary session that is deleted after.
//
// Thread-safety: thread-safe; concurrent calls interleave at model-step granularity.
#ifndef LIVEKV_SERVICES_DECODE_DECODE_WORKER_H_
#define LIVEKV_SERVICES_DECODE_DECODE_WORKER_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "engine/sampler.h"
#include "kvcache/policy_options.h"
#include "services/channels/channel_factory.h"
#include "services/kvstore/kvstore_client.h"
#include "services/prefill/prefill_client.h"

namespace livekv {

struct DecodeWorkerOptions {
  std::string model_name;
  PolicyOptions one_shot_policy;          // policy of temporary sessions
  absl::Duration lease_ttl = absl::Seconds(30);
  int64_t max_tokens_limit = 4096;        // largest max_tokens a request may ask for
  // How recalled KV bytes move (services/channels/channel_factory.h): the fastest the store offers (shm on its
  // host, else UCX, else gRPC), or a forced one; a channel failing mid-call falls back to the next.
  ChannelPreference channel;
};

struct GenerateParams {
  std::string session_id;  // empty: one-shot
  std::string prompt;
  int32_t max_tokens = 64;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool append_turn = false;
  bool add_bos = false;
};

struct GenerateTimings {
  double prefill_ms = 0, first_token_ms = 0, decode_ms = 0, one_shot_prefill_ms = 0;
  double recall_ms = 0;          // spent recalling (on the recall thread, overlapped with compute when prefetched)
  double recall_blocked_ms = 0;  // the decode thread waited for recalls
  int64_t recall_bytes = 0, prompt_tokens = 0, generated_tokens = 0;
  std::string channel;
  double tokens_per_second() const {
    return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) / (decode_ms / 1e3) : 0;
  }
};

struct GenerateOutcome {
  GenerateTimings timings;
  std::string finish_reason;  // "eos", "stop", "length"
  std::vector<int32_t> ids;   // generated
  std::string text;
};

class DecodeWorker {
 public:
  // `prefill` may be null (then one-shot prompts and append_turn are FAILED_PRECONDITION). All borrowed.
  DecodeWorker(const LoadedModel* model, CpuBackend* backend, KvStoreClient* store, PrefillClient* prefill,
               const DecodeWorkerOptions& options);

  // `emit` receives each piece of completed text with the ids that produced it; returning false stops generation
  // (the client went away). `cancelled` is polled before every model step: CANCELLED when it turns true.
  absl::StatusOr<GenerateOutcome> Generate(
      const GenerateParams& params,
      const std::function<bool(absl::Span<const int32_t> ids, absl::string_view text)>& emit,
      const std::function<bool()>& cancelled);

 private:
  absl::StatusOr<GenerateOutcome> GenerateOnSession(
      const GenerateParams& params, const std::vector<int32_t>& prompt,
      const std::function<bool(absl::Span<const int32_t>, absl::string_view)>& emit,
      const std::function<bool()>& cancelled, std::chrono::steady_clock::time_point start);

  const LoadedModel* const model_;
  CpuBackend* const backend_;
  KvStoreClient* const store_;
  PrefillClient* const prefill_;
  const DecodeWorkerOptions options_;
  HostAllocator host_;
  absl::Mutex model_mu_;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_DECODE_DECODE_WORKER_H_
