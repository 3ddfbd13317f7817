// File: client/sdk/replay.h
//
// What lets a Generate call survive the death of its decode service: the call is re-issued (on another decode
// service, or the same one restarted), and since generation is deterministic for a given request (greedy, or
// sampling with a fixed seed), the new stream first replays what the caller already has. ReplayTracker checks the
// replay against what was delivered and passes on only what is new, so the caller sees one uninterrupted answer.
//
//   ReplayTracker replay;
//   for each attempt:
//     replay.BeginAttempt();
//     for each received piece: LIVEKV_ASSIGN_OR_RETURN(Piece fresh, replay.Accept(piece)); deliver(fresh);
//     at the attempt's final message: LIVEKV_RETURN_IF_ERROR(replay.CheckComplete());
//
// Comparison is token by token and byte by byte, so a replay may split the answer into pieces differently.
// Thread-compatible.
#ifndef LIVEKV_CLIENT_SDK_REPLAY_H_
#define LIVEKV_CLIENT_SDK_REPLAY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/sdk/options.h"

namespace livekv::sdk {

class ReplayTracker {
 public:
  // Starts an attempt: the pieces that follow are compared with the delivered answer from its beginning.
  void BeginAttempt();

  // Takes a received piece. Returns the part of it not delivered before (empty when it is all replay), and
  // records that part as delivered. ABORTED when the piece contradicts the delivered answer (the generation is
  // not deterministic: sampling without a fixed seed, or decode services that compute differently).
  absl::StatusOr<Piece> Accept(const Piece& received);

  // At the end of an attempt's stream. ABORTED when it ended before replaying everything delivered.
  absl::Status CheckComplete() const;

  // True while the current attempt is still replaying delivered tokens.
  bool replaying() const { return id_pos_ < ids_.size() || text_pos_ < text_.size(); }

  const std::vector<int32_t>& ids() const { return ids_; }
  const std::string& text() const { return text_; }

 private:
  std::vector<int32_t> ids_;  // delivered
  std::string text_;
  size_t id_pos_ = 0;  // how far the current attempt has come
  size_t text_pos_ = 0;
};

}  // namespace livekv::sdk

#endif  // LIVEKV_CLIENT_SDK_REPLAY_H_
