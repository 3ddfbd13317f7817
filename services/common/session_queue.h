// File: services/common/session_queue.h
//
// Orders work per session and pushes back when too much is waiting: callers for one session are served one at a
// time in arrival order; different sessions proceed independently.
//
//   LIVEKV_ASSIGN_OR_RETURN(SessionQueue::Turn turn, queue.Enter(session_id, [&] { return ctx->IsCancelled(); }));
//   ... work on the session; the next caller proceeds when `turn` is destroyed ...
//
// Thread-safety: thread-safe.
#ifndef LIVEKV_SERVICES_COMMON_SESSION_QUEUE_H_
#define LIVEKV_SERVICES_COMMON_SESSION_QUEUE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace livekv {

class SessionQueue {
 public:
  // At most `max_per_session` callers (running or waiting) per session and `max_total` overall.
  SessionQueue(int max_per_session, int max_total);

  class Turn {
   public:
    Turn() = default;
    Turn(Turn&& o) noexcept : queue_(o.queue_), session_(std::move(o.session_)) { o.queue_ = nullptr; }
    Turn& operator=(Turn&& o) noexcept;
    ~Turn();

   private:
    friend class SessionQueue;
    Turn(SessionQueue* q, std::string s) : queue_(q), session_(std::move(s)) {}
    SessionQueue* queue_ = nullptr;
    std::string session_;
  };

  // Waits for the session's turn. RESOURCE_EXHAUSTED (naming the limit) when the queue is full; CANCELLED when
  // `cancelled` returns true while waiting (polled every few milliseconds).
  absl::StatusOr<Turn> Enter(const std::string& session, const std::function<bool()>& cancelled);

  int waiting() const;

 private:
  struct Line {
    uint64_t next_ticket = 0;  // handed to the next arrival
    uint64_t serving = 0;      // the ticket whose turn it is
    int members = 0;           // running + waiting
    absl::flat_hash_map<uint64_t, bool> abandoned;  // tickets whose holder gave up while waiting
  };
  void Leave(const std::string& session);
  void AdvanceLocked(Line& line) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_per_session_, max_total_;
  mutable absl::Mutex mu_;
  // Node-based so a waiter's pointer into its line stays valid while other sessions come and go.
  absl::node_hash_map<std::string, Line> lines_ ABSL_GUARDED_BY(mu_);
  int total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace livekv

#endif  // LIVEKV_SERVICES_COMMON_SESSION_QUEUE_H_
