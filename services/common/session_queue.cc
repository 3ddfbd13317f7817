#include "services/common/session_queue.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace livekv {

SessionQueue::SessionQueue(int max_per_session, int max_total)
    : max_per_session_(max_per_session), max_total_(max_total) {}

SessionQueue::Turn& SessionQueue::Turn::operator=(Turn&& o) noexcept {
  if (this != &o) {
    if (queue_ != nullptr) queue_->Leave(session_);
    queue_ = o.queue_;
    session_ = std::move(o.session_);
    o.queue_ = nullptr;
  }
  return *this;
}

SessionQueue::Turn::~Turn() {
  if (queue_ != nullptr) queue_->Leave(session_);
}

int SessionQueue::waiting() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

void SessionQueue::AdvanceLocked(Line& line) {
  // Skip tickets whose holders gave up while waiting.
  while (line.abandoned.erase(line.serving) > 0) ++line.serving;
}

absl::StatusOr<SessionQueue::Turn> SessionQueue::Enter(const std::string& session,
                                                       const std::function<bool()>& cancelled) {
  absl::MutexLock lock(&mu_);
  if (total_ >= max_total_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many requests in flight (", total_, " of at most ", max_total_, "); retry later"));
  }
  Line* line_ptr = &lines_[session];
  Line& line = *line_ptr;
  if (line.members >= max_per_session_) {
    return absl::ResourceExhaustedError(absl::StrCat("session ", session, " already has ", line.members,
                                                     " requests queued (at most ", max_per_session_, ")"));
  }
  const uint64_t ticket = line.next_ticket++;
  ++line.members;
  ++total_;
  // The line lives while this caller is a member, and node_hash_map keeps it at one address.
  std::pair<const uint64_t*, uint64_t> turn(&line_ptr->serving, ticket);
  while (true) {
    if (line_ptr->serving == ticket) return Turn(this, session);
    if (cancelled && cancelled()) {
      line_ptr->abandoned[ticket] = true;
      --line_ptr->members;
      --total_;
      return absl::CancelledError(absl::StrCat("cancelled while waiting for session ", session));
    }
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](std::pair<const uint64_t*, uint64_t>* a) { return *a->first == a->second; }, &turn),
                         absl::Milliseconds(5));
  }
}

void SessionQueue::Leave(const std::string& session) {
  absl::MutexLock lock(&mu_);
  auto it = lines_.find(session);
  if (it == lines_.end()) return;
  Line& line = it->second;
  ++line.serving;
  AdvanceLocked(line);
  --line.members;
  --total_;
  if (line.members == 0) lines_.erase(it);
}

}  // namespace livekv
