#include "client/sdk/replay.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace livekv::sdk {
namespace {

constexpr char kCannotResume[] =
    "; the decode service that took over after a failure generated a different answer, and non-deterministic "
    "sampling cannot resume (use greedy decoding or a fixed seed, on decode services that compute alike)";

}  // namespace

void ReplayTracker::BeginAttempt() {
  id_pos_ = 0;
  text_pos_ = 0;
}

absl::StatusOr<Piece> ReplayTracker::Accept(const Piece& received) {
  Piece fresh;
  for (const int32_t id : received.ids) {
    if (id_pos_ < ids_.size()) {
      if (ids_[id_pos_] != id) {
        return absl::AbortedError(absl::StrCat("replayed token ", id_pos_, " is id ", id, " but id ", ids_[id_pos_],
                                               " was delivered", kCannotResume));
      }
      ++id_pos_;
    } else {
      fresh.ids.push_back(id);
    }
  }
  const size_t overlap = std::min(received.text.size(), text_.size() - text_pos_);
  if (text_.compare(text_pos_, overlap, received.text, 0, overlap) != 0) {
    return absl::AbortedError(absl::StrCat("replayed text at byte ", text_pos_, " is \"",
                                           received.text.substr(0, overlap), "\" but \"",
                                           text_.substr(text_pos_, overlap), "\" was delivered", kCannotResume));
  }
  text_pos_ += overlap;
  fresh.text = received.text.substr(overlap);
  ids_.insert(ids_.end(), fresh.ids.begin(), fresh.ids.end());
  text_ += fresh.text;
  id_pos_ += fresh.ids.size();
  text_pos_ += fresh.text.size();
  return fresh;
}

absl::Status ReplayTracker::CheckComplete() const {
  if (!replaying()) return absl::OkStatus();
  return absl::AbortedError(
      absl::StrCat("the replay ended after ", id_pos_, " tokens but ", ids_.size(), " were delivered", kCannotResume));
}

}  // namespace livekv::sdk
