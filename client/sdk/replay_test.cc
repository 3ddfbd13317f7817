#include "client/sdk/replay.h"

#include "gtest/gtest.h"

namespace livekv::sdk {
namespace {

TEST(ReplayTrackerTest, FirstAttemptDeliversEverything) {
  ReplayTracker r;
  r.BeginAttempt();
  absl::StatusOr<Piece> p = r.Accept({{1, 2}, "ab"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(p->text, "ab");
  EXPECT_TRUE(r.CheckComplete().ok());
  EXPECT_EQ(r.text(), "ab");
}

TEST(ReplayTrackerTest, ReplayDeliversOnlyNewPartsEvenWhenSplitDifferently) {
  ReplayTracker r;
  r.BeginAttempt();
  ASSERT_TRUE(r.Accept({{1}, "a"}).ok());
  ASSERT_TRUE(r.Accept({{2}, "b"}).ok());
  ASSERT_TRUE(r.Accept({{3}, "c"}).ok());
  r.BeginAttempt();  // failover
  EXPECT_TRUE(r.replaying());
  absl::StatusOr<Piece> p = r.Accept({{1, 2}, "ab"});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->ids.empty());
  EXPECT_TRUE(p->text.empty());
  // Straddles the delivered end: only "d" is new.
  p = r.Accept({{3, 4}, "cd"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ids, (std::vector<int32_t>{4}));
  EXPECT_EQ(p->text, "d");
  EXPECT_FALSE(r.replaying());
  EXPECT_TRUE(r.CheckComplete().ok());
  EXPECT_EQ(r.ids(), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(r.text(), "abcd");
}

TEST(ReplayTrackerTest, DifferentTokenIsAborted) {
  ReplayTracker r;
  r.BeginAttempt();
  ASSERT_TRUE(r.Accept({{1, 2}, "ab"}).ok());
  r.BeginAttempt();
  absl::StatusOr<Piece> p = r.Accept({{1, 7}, "ax"});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(p.status().message().find("cannot resume"), std::string::npos);
}

TEST(ReplayTrackerTest, DifferentTextIsAborted) {
  ReplayTracker r;
  r.BeginAttempt();
  ASSERT_TRUE(r.Accept({{1}, "a"}).ok());
  r.BeginAttempt();
  EXPECT_EQ(r.Accept({{1}, "z"}).status().code(), absl::StatusCode::kAborted);
}

TEST(ReplayTrackerTest, ReplayEndingEarlyIsAborted) {
  ReplayTracker r;
  r.BeginAttempt();
  ASSERT_TRUE(r.Accept({{1, 2, 3}, "abc"}).ok());
  r.BeginAttempt();
  ASSERT_TRUE(r.Accept({{1}, "a"}).ok());
  EXPECT_EQ(r.CheckComplete().code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace livekv::sdk
