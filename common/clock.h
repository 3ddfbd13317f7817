// File: common/clock.h
//
// The time source of everything that expires (sessions, leases, appends), passed in so tests can control it.
//
//   SessionStore store(options, Clock::Real());      // production
//   FakeClock clock;                                  // tests
//   SessionStore store(options, &clock);
//   clock.Advance(absl::Seconds(31));                 // a 30 s lease is now expired
//
// Only Now() goes through the clock; waiting (a reaper's period, a back-off) uses real time, so a test drives
// expiry by advancing a FakeClock and running the expiring component's pass synchronously.
#ifndef LIVEKV_COMMON_CLOCK_H_
#define LIVEKV_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace livekv {

// Thread-safety: implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide real clock (absl::Now()); never destroyed.
  static Clock* Real();
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override;
};

// A clock that moves only when told to. Starts at `start` (by default 2023-11-14 22:13:20 UTC, a fixed instant so
// that test output is reproducible).
// Thread-safety: thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}

  absl::Time Now() const override;
  // REQUIRES: d >= 0 (time does not run backwards).
  void Advance(absl::Duration d);
  // REQUIRES: t >= Now().
  void Set(absl::Time t);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livekv

#endif  // LIVEKV_COMMON_CLOCK_H_
