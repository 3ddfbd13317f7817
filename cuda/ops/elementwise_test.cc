#include "cuda/ops/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda/testing/test_util.h"
#include "engine/rope.h"

namespace livekv {
namespace cuda {
namespace {

using testing::DeviceArray;
using testing::ExpectClose;
using testing::kBf16Eps;
using testing::RandomFloats;
using testing::RoundBf16;
using testing::ToBf16;
using testing::ToFloat;

class ElementwiseTest : public testing::GpuTest {};

TEST_F(ElementwiseTest, EmbeddingGatherIsExact) {
  std::mt19937 rng(1);
  for (int64_t hidden : {8, 64, 100, 4104}) {  // 100: not a multiple of 8 (scalar path)
    for (int64_t n : {1, 7, 33}) {
      const int64_t vocab = 97;
      std::vector<bf16> table = ToBf16(RandomFloats(vocab * hidden, &rng, -3, 3));
      std::vector<int32_t> ids(n);
      for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % vocab);
      if (n > 3) ids[2] = static_cast<int32_t>(vocab);  // out of range -> zeros
      if (n > 4) ids[3] = -1;
      auto d_table = DeviceArray<bf16>::FromHost(table);
      auto d_ids = DeviceArray<int32_t>::FromHost(ids);
      DeviceArray<bf16> d_out(n * hidden);
      ASSERT_TRUE(EmbeddingGather(d_ids.get(), n, d_table.get(), vocab, hidden, d_out.get(), stream()).ok());
      std::vector<uint16_t> got = testing::Bits(d_out.ToHost()), tab = testing::Bits(table);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t c = 0; c < hidden; ++c) {
          const uint16_t want = (ids[i] < 0 || ids[i] >= vocab) ? 0 : tab[ids[i] * hidden + c];
          ASSERT_EQ(got[i * hidden + c], want) << "hidden " << hidden << " row " << i << " col " << c;
        }
      }
    }
  }
  EXPECT_TRUE(EmbeddingGather(nullptr, 0, nullptr, 10, 8, nullptr, stream()).ok());  // n = 0: nothing
  EXPECT_EQ(EmbeddingGather(nullptr, 1, nullptr, 0, 8, nullptr, stream()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ElementwiseTest, RmsNormMatchesReference) {
  std::mt19937 rng(2);
  for (int64_t hidden : {64, 97, 896, 4096}) {
    for (int64_t rows : {1, 7, 33}) {
      const float eps = 1e-6f;
      std::vector<float> x = RoundBf16(RandomFloats(rows * hidden, &rng, -4, 4));
      std::vector<float> w = RoundBf16(RandomFloats(hidden, &rng, 0.5f, 1.5f));
      auto dx = DeviceArray<bf16>::FromHost(ToBf16(x));
      auto dw = DeviceArray<bf16>::FromHost(ToBf16(w));
      DeviceArray<bf16> dout(rows * hidden);
      ASSERT_TRUE(RmsNorm(dx.get(), dw.get(), rows, hidden, eps, dout.get(), stream()).ok());
      std::vector<float> ref(rows * hidden);
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t c = 0; c < hidden; ++c) ss += double(x[r * hidden + c]) * x[r * hidden + c];
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / hidden + eps));
        for (int64_t c = 0; c < hidden; ++c) ref[r * hidden + c] = w[c] * (x[r * hidden + c] * inv);
      }
      // Two bf16 roundings (x * inv, then * w): 2 ulp relative.
      ExpectClose(ToFloat(dout.ToHost()), ref, 1e-6f, 2 * kBf16Eps, "rms_norm hidden " + std::to_string(hidden));
    }
  }
  // In place (out aliases x).
  std::vector<float> x = RoundBf16(RandomFloats(3 * 128, &rng));
  std::vector<float> w(128, 1.0f);
  auto dx = DeviceArray<bf16>::FromHost(ToBf16(x));
  auto dw = DeviceArray<bf16>::FromHost(ToBf16(w));
  ASSERT_TRUE(RmsNorm(dx.get(), dw.get(), 3, 128, 1e-5f, dx.get(), stream()).ok());
  std::vector<float> got = ToFloat(dx.ToHost());
  double ss = 0;
  for (int c = 0; c < 128; ++c) ss += double(x[c]) * x[c];
  EXPECT_NEAR(got[5], x[5] / std::sqrt(ss / 128 + 1e-5), 2 * kBf16Eps * std::fabs(got[5]) + 1e-6);
  EXPECT_EQ(RmsNorm(dx.get(), dw.get(), 3, 0, 1e-5f, dx.get(), stream()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ElementwiseTest, SplitQkvRopeMatchesEngineRope) {
  std::mt19937 rng(3);
  struct Case {
    int32_t hq, hkv, d;
    int64_t n, pos0;
    bool explicit_positions;
  };
  for (const Case& c : {Case{1, 1, 64, 1, 0, false}, Case{3, 1, 64, 7, 5, false}, Case{8, 2, 128, 33, 1000, false},
                        Case{4, 4, 128, 5, 0, true}, Case{14, 2, 64, 3, 131071, false}, Case{2, 1, 6, 9, 2, false}}) {
    ModelConfig config;
    config.head_dim = c.d;
    config.rope_theta = 500000.0;
    const RopeTable rope = RopeTable::FromConfig(config);
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
    std::vector<float> qkv = RoundBf16(RandomFloats(c.n * width, &rng, -2, 2));
    std::vector<int32_t> positions(c.n);
    for (int64_t r = 0; r < c.n; ++r) positions[r] = static_cast<int32_t>(c.explicit_positions ? (r * 977) % 40000 : c.pos0 + r);
    auto d_qkv = DeviceArray<bf16>::FromHost(ToBf16(qkv));
    auto d_inv = DeviceArray<float>::FromHost(rope.inv_freq);
    auto d_pos = DeviceArray<int32_t>::FromHost(positions);
    DeviceArray<bf16> dq(c.n * c.hq * c.d), dk(c.n * c.hkv * c.d), dv(c.n * c.hkv * c.d);
    ASSERT_TRUE(SplitQkvRope(d_qkv.get(), c.n, c.hq, c.hkv, c.d, d_inv.get(),
                             c.explicit_positions ? d_pos.get() : nullptr, c.pos0, dq.get(), dk.get(), dv.get(), stream())
                    .ok());
    std::vector<float> rq(c.n * c.hq * c.d), rk(c.n * c.hkv * c.d), rv(c.n * c.hkv * c.d);
    std::vector<float> tq(rq.size()), tk(rk.size());  // tolerance: bf16 ulp of |x0| + |x1|
    const int half = c.d / 2;
    for (int64_t r = 0; r < c.n; ++r) {
      const float* src = &qkv[r * width];
      for (int h = 0; h < c.hq + c.hkv; ++h) {
        std::vector<float> head(src + h * c.d, src + (h + 1) * c.d);
        ApplyRope(rope, positions[r], head.data());
        float* dst = h < c.hq ? &rq[(r * c.hq + h) * c.d] : &rk[(r * c.hkv + h - c.hq) * c.d];
        float* tol = h < c.hq ? &tq[(r * c.hq + h) * c.d] : &tk[(r * c.hkv + h - c.hq) * c.d];
        for (int i = 0; i < c.d; ++i) {
          dst[i] = head[i];
          tol[i] = kBf16Eps * (std::fabs(src[h * c.d + i % half]) + std::fabs(src[h * c.d + half + i % half])) + 1e-6f;
        }
      }
      for (int64_t e = 0; e < c.hkv * c.d; ++e) rv[r * c.hkv * c.d + e] = src[(c.hq + c.hkv) * c.d + e];
    }
    const std::string what = "hq " + std::to_string(c.hq) + " d " + std::to_string(c.d) + " n " + std::to_string(c.n);
    ExpectClose(ToFloat(dq.ToHost()), rq, tq, 0.0f, "q " + what);
    ExpectClose(ToFloat(dk.ToHost()), rk, tk, 0.0f, "k " + what);
    ExpectClose(ToFloat(dv.ToHost()), rv, 0.0f, 0.0f, "v (exact copy) " + what);
  }
  EXPECT_EQ(SplitQkvRope(nullptr, 1, 1, 1, 63, nullptr, nullptr, 0, nullptr, nullptr, nullptr, stream()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ElementwiseTest, SwiGluMatchesReference) {
  std::mt19937 rng(4);
  for (int64_t inter : {8, 13, 4864}) {
    for (int64_t rows : {1, 7, 33}) {
      std::vector<float> gu = RoundBf16(RandomFloats(rows * 2 * inter, &rng, -6, 6));
      auto dgu = DeviceArray<bf16>::FromHost(ToBf16(gu));
      DeviceArray<bf16> dout(rows * inter);
      ASSERT_TRUE(SwiGlu(dgu.get(), rows, inter, dout.get(), stream()).ok());
      std::vector<float> ref(rows * inter);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < inter; ++i) {
          const float g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
          ref[r * inter + i] = g / (1.0f + std::exp(-g)) * u;
        }
      }
      ExpectClose(ToFloat(dout.ToHost()), ref, 1e-6f, 1.5f * kBf16Eps, "swiglu inter " + std::to_string(inter));
    }
  }
}

TEST_F(ElementwiseTest, AddInPlaceIsExactlyRounded) {
  std::mt19937 rng(5);
  for (int64_t n : {1, 7, 33, 97, 4096, 100003}) {
    std::vector<float> x = RoundBf16(RandomFloats(n, &rng, -100, 100)), y = RoundBf16(RandomFloats(n, &rng, -1, 1));
    auto dx = DeviceArray<bf16>::FromHost(ToBf16(x));
    auto dy = DeviceArray<bf16>::FromHost(ToBf16(y));
    ASSERT_TRUE(AddInPlace(dx.get(), dy.get(), n, stream()).ok());
    std::vector<float> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = x[i] + y[i];
    EXPECT_EQ(testing::Bits(dx.ToHost()), testing::Bits(ToBf16(ref))) << "n " << n;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
