#include "engine/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace livekv {
namespace {

TEST(DTypeTest, BF16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = BF16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(f))));
      continue;
    }
    EXPECT_EQ(F32ToBF16(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f))));
      continue;
    }
    EXPECT_EQ(F32ToF16(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even mantissa (1).
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  // f16: 1 + 2^-11 ties to 1; 65520 overflows to inf; 2^-25 rounds to 0; 3*2^-26 rounds to 2^-24.
  EXPECT_EQ(F16ToF32(F32ToF16(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  EXPECT_TRUE(std::isinf(F16ToF32(F32ToF16(65520.0f))));
  EXPECT_EQ(F16ToF32(F32ToF16(65504.0f)), 65504.0f);
  EXPECT_EQ(F16ToF32(F32ToF16(std::ldexp(1.0f, -25))), 0.0f);
  EXPECT_EQ(F16ToF32(F32ToF16(3 * std::ldexp(1.0f, -26))), std::ldexp(1.0f, -24));
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64, DType::kU8}) {
    DType parsed;
    ASSERT_TRUE(ParseDTypeName(DTypeName(t), &parsed));
    EXPECT_EQ(parsed, t);
  }
  DType unused;
  EXPECT_FALSE(ParseDTypeName("F8_E4M3", &unused));
}

}  // namespace
}  // namespace livekv
