#include "common/clock.h"

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

TEST(ClockTest, RealClockFollowsAbslNow) {
  const absl::Time before = absl::Now();
  const absl::Time t = Clock::Real()->Now();
  EXPECT_GE(t, before);
  EXPECT_LE(t, absl::Now());
  EXPECT_EQ(Clock::Real(), Clock::Real());
}

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  FakeClock clock(absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100));
  clock.Advance(absl::Milliseconds(1500));
  EXPECT_EQ(clock.Now(), absl::FromUnixMillis(101500));
  clock.Set(absl::FromUnixSeconds(200));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(200));
  clock.Advance(absl::ZeroDuration());
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(200));
}

TEST(ClockDeathTest, FakeClockRefusesToRunBackwards) {
  FakeClock clock;
  EXPECT_DEATH(clock.Advance(absl::Seconds(-1)), "backwards");
}

}  // namespace
}  // namespace livekv
