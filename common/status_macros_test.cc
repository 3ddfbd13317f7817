#include "common/status_macros.h"

#include <memory>

#include "gtest/gtest.h"

namespace livekv {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Check(int x) {
  if (x < 0) return absl::OutOfRangeError("negative");
  return absl::OkStatus();
}

absl::StatusOr<int> Quarter(int x) {
  LIVEKV_RETURN_IF_ERROR(Check(x));
  LIVEKV_ASSIGN_OR_RETURN(int h, Half(x));
  LIVEKV_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int x) { return std::make_unique<int>(x); }

absl::StatusOr<int> Unbox(int x) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(x));
  return *box;
}

TEST(StatusMacrosTest, PropagatesFirstError) {
  EXPECT_EQ(Quarter(8).value(), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quarter(-4).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(StatusMacrosTest, MovesMoveOnlyValues) { EXPECT_EQ(Unbox(7).value(), 7); }

}  // namespace
}  // namespace livekv
