#include "common/clock.h"

#include "absl/time/clock.h"
#include "common/logging.h"

namespace livekv {

Clock* Clock::Real() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time RealClock::Now() const { return absl::Now(); }

absl::Time FakeClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

void FakeClock::Advance(absl::Duration d) {
  CHECK(d >= absl::ZeroDuration()) << "FakeClock cannot run backwards: " << absl::FormatDuration(d);
  absl::MutexLock lock(&mu_);
  now_ += d;
}

void FakeClock::Set(absl::Time t) {
  absl::MutexLock lock(&mu_);
  CHECK(t >= now_) << "FakeClock cannot run backwards";
  now_ = t;
}

}  // namespace livekv
