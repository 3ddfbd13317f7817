// KV data movement must be bit-exact: compared byte for byte with kvcache/page_layout.h and plain loops, on
// poisoned destinations (rows that must not be written stay poisoned).
#include "cuda/ops/kv_layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/testing/test_util.h"
#include "kvcache/page_layout.h"

namespace livekv {
namespace cuda {
namespace {

using testing::DeviceArray;

class KvLayoutTest : public testing::GpuTest {};

std::vector<uint8_t> RandomBytes(size_t n, std::mt19937* rng) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>((*rng)() & 0x7f);  // never 0xFF, the poison
  return v;
}

// Fills runs[0, count) with runs of size_of() bytes (multiples of 16) from random 16-byte-aligned places of `src`
// (whose copy the device reads at `base`) into `dst`, back to back with gaps of 0-32 bytes, and `want` (0xFF
// outside the runs) with what dst must hold after them. Returns count: at most n, fewer when dst is full.
int32_t RandomRuns(std::mt19937* rng, const std::function<size_t()>& size_of, const uint8_t* base,
                   const std::vector<uint8_t>& src, uint8_t* dst, int32_t n, CopyRun* runs, std::vector<uint8_t>* want) {
  want->assign(src.size(), 0xFF);
  size_t off = 0;
  int32_t count = 0;
  for (; count < n; ++count) {
    const size_t bytes = size_of();
    if (off + bytes > src.size()) break;
    const size_t from = 16 * ((*rng)() % ((src.size() - bytes) / 16));
    runs[count] = CopyRun{base + from, dst + off, bytes};
    std::memcpy(want->data() + off, src.data() + from, bytes);
    off += bytes + 16 * ((*rng)() % 3);  // gaps stay poisoned
  }
  return count;
}

TEST_F(KvLayoutTest, GatherAndScatterRowsExactly) {
  std::mt19937 rng(51);
  for (int64_t row_bytes : {2, 10, 256, 512}) {
    for (int64_t n : {1, 7, 33, 97}) {
      const int64_t src_rows = n * 3 + 1;
      const int64_t stride = row_bytes + (row_bytes % 16 == 0 ? 16 : 3);  // padded rows
      std::vector<uint8_t> src = RandomBytes(src_rows * stride, &rng);
      std::vector<int32_t> gather(n), perm(src_rows);
      for (auto& i : gather) i = static_cast<int32_t>(rng() % src_rows);
      if (n > 2) gather[1] = -1;  // skipped
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::vector<int32_t> scatter(perm.begin(), perm.begin() + n);  // distinct destinations
      auto dsrc = DeviceArray<uint8_t>::FromHost(src);
      auto dg = DeviceArray<int32_t>::FromHost(gather);
      auto ds = DeviceArray<int32_t>::FromHost(scatter);
      DeviceArray<uint8_t> gathered(n * row_bytes), scattered(src_rows * stride);
      ASSERT_TRUE(CopyRows(dsrc.get(), stride, dg.get(), gathered.get(), row_bytes, nullptr, n, row_bytes, stream()).ok());
      ASSERT_TRUE(CopyRows(gathered.get(), row_bytes, nullptr, scattered.get(), stride, ds.get(), n, row_bytes, stream()).ok());
      std::vector<uint8_t> want_g(n * row_bytes, 0xFF), want_s(src_rows * stride, 0xFF);
      for (int64_t i = 0; i < n; ++i) {
        if (gather[i] >= 0) std::memcpy(&want_g[i * row_bytes], &src[gather[i] * stride], row_bytes);
      }
      for (int64_t i = 0; i < n; ++i) std::memcpy(&want_s[scatter[i] * stride], &want_g[i * row_bytes], row_bytes);
      const std::string what = "row_bytes " + std::to_string(row_bytes) + " n " + std::to_string(n);
      EXPECT_EQ(gathered.ToHost(), want_g) << what;
      EXPECT_EQ(scattered.ToHost(), want_s) << what;
    }
  }
}

TEST_F(KvLayoutTest, TokenMajorToPagesMatchesPageLayout) {
  std::mt19937 rng(52);
  struct Case {
    int32_t page_tokens, head_dim;
    DType dtype;
    int32_t heads;
    int64_t n;
  };
  for (const Case& c : {Case{32, 128, DType::kBF16, 8, 97}, Case{1, 64, DType::kBF16, 1, 7}, Case{7, 64, DType::kF32, 3, 33},
                        Case{32, 5, DType::kBF16, 3, 40}, Case{16, 256, DType::kF16, 2, 1}}) {
    PageLayout layout;
    layout.page_tokens = c.page_tokens;
    layout.head_dim = c.head_dim;
    layout.dtype = c.dtype;
    const int64_t row = layout.row_bytes();
    std::vector<uint8_t> k = RandomBytes(c.n * c.heads * row, &rng), v = RandomBytes(c.n * c.heads * row, &rng);
    // Each head writes rows starting at first_row[h] of its own run of pages (separate runs in one arena).
    std::vector<int64_t> first_row(c.heads);
    for (int h = 0; h < c.heads; ++h) first_row[h] = (h * 5) % (c.page_tokens + 3);
    const int64_t pages_per_head = layout.PagesFor(c.n + c.page_tokens + 3) + 1;
    const size_t arena_bytes = c.heads * pages_per_head * layout.page_bytes();
    std::vector<uint8_t> want(arena_bytes, 0xFF);
    for (int h = 0; h < c.heads; ++h) {
      TokenMajorToPages(layout, k.data(), v.data(), c.n, c.heads, h, want.data() + h * pages_per_head * layout.page_bytes(),
                        first_row[h]);
    }
    DeviceArray<uint8_t> arena(arena_bytes);
    std::vector<uint8_t*> head_pages(c.heads);
    for (int h = 0; h < c.heads; ++h) head_pages[h] = arena.get() + h * pages_per_head * layout.page_bytes();
    auto dpages = DeviceArray<uint8_t*>::FromHost(head_pages);
    auto dfirst = DeviceArray<int64_t>::FromHost(first_row);
    auto dk = DeviceArray<uint8_t>::FromHost(k);
    auto dv = DeviceArray<uint8_t>::FromHost(v);
    ASSERT_TRUE(cuda::TokenMajorToPages(dk.get(), dv.get(), c.n, c.heads, row, c.page_tokens, dpages.get(), dfirst.get(),
                                        stream()).ok());
    const std::string what = "P " + std::to_string(c.page_tokens) + " D " + std::to_string(c.head_dim);
    EXPECT_EQ(arena.ToHost(), want) << what;
    // And back.
    DeviceArray<uint8_t> k2(k.size()), v2(v.size());
    ASSERT_TRUE(cuda::PagesToTokenMajor(dpages.get(), dfirst.get(), c.page_tokens, c.n, c.heads, row, k2.get(), v2.get(),
                                        stream()).ok());
    std::vector<uint8_t> k_ref(k.size(), 0xFF), v_ref(v.size(), 0xFF);
    for (int h = 0; h < c.heads; ++h) {
      PagesToTokenMajor(layout, want.data() + h * pages_per_head * layout.page_bytes(), first_row[h], c.n, c.heads, h,
                        k_ref.data(), v_ref.data());
    }
    EXPECT_EQ(k_ref, k) << what;
    EXPECT_EQ(k2.ToHost(), k_ref) << what;
    EXPECT_EQ(v2.ToHost(), v_ref) << what;
  }
}

TEST_F(KvLayoutTest, TokenMajorHeadMajorRoundTrip) {
  std::mt19937 rng(53);
  for (int64_t row : {6, 256}) {
    for (int heads : {1, 3, 8}) {
      const int64_t n = 33, capacity = 97, row0 = 60;
      std::vector<uint8_t> src = RandomBytes(n * heads * row, &rng);
      auto dsrc = DeviceArray<uint8_t>::FromHost(src);
      DeviceArray<uint8_t> hm(heads * capacity * row), back(src.size());
      ASSERT_TRUE(TokenMajorToHeadMajor(dsrc.get(), n, heads, row, hm.get(), capacity, row0, stream()).ok());
      ASSERT_TRUE(HeadMajorToTokenMajor(hm.get(), capacity, row0, n, heads, row, back.get(), stream()).ok());
      std::vector<uint8_t> want(heads * capacity * row, 0xFF);
      for (int64_t t = 0; t < n; ++t) {
        for (int h = 0; h < heads; ++h) std::memcpy(&want[(h * capacity + row0 + t) * row], &src[(t * heads + h) * row], row);
      }
      EXPECT_EQ(hm.ToHost(), want);
      EXPECT_EQ(back.ToHost(), src);
      EXPECT_EQ(TokenMajorToHeadMajor(dsrc.get(), n, heads, row, hm.get(), capacity, 70, stream()).code(),
                absl::StatusCode::kInvalidArgument);  // rows past the capacity
    }
  }
}

TEST_F(KvLayoutTest, GatherRunsCopiesPinnedRunsExactly) {
  std::mt19937 rng(57);
  // Sources and the run list in mapped pinned host memory (the recall path), destinations on the device.
  const size_t src_bytes = size_t{1} << 20;
  auto host = PinnedHostBuffer::Create(src_bytes, /*mapped=*/true);
  ASSERT_TRUE(host.ok()) << host.status();
  std::vector<uint8_t> src = RandomBytes(src_bytes, &rng);
  std::memcpy(host->data(), src.data(), src_bytes);
  for (int32_t n : {1, 7, 97, 600}) {
    for (auto [ctas, threads] : {std::pair<int32_t, int32_t>{1, 512}, {16, 512}, {3, 96}, {2, 1024}}) {
      DeviceArray<uint8_t> dst(src_bytes);
      auto list = PinnedHostBuffer::Create(n * sizeof(CopyRun), true);
      ASSERT_TRUE(list.ok());
      std::vector<uint8_t> want;
      // 16 B .. 3.2 KiB: partial warps and the unrolled loop.
      const int32_t count = RandomRuns(&rng, [&] { return size_t{16} * (1 + rng() % 200); }, host->as<uint8_t>(), src,
                                       dst.get(), n, list->as<CopyRun>(), &want);
      const CopyRun* runs = list->as<CopyRun>();
      ASSERT_TRUE(GatherRuns(runs, count, ctas, threads, stream()).ok());
      Sync();
      EXPECT_EQ(dst.ToHost(), want) << n << " runs, " << ctas << " CTAs of " << threads << " threads";
    }
  }
  for (auto [ctas, threads] : {std::pair<int32_t, int32_t>{0, 512}, {1, 0}, {1, 48}, {1, 2048}}) {
    EXPECT_EQ(GatherRuns(nullptr, 1, ctas, threads, stream()).code(), absl::StatusCode::kInvalidArgument)
        << ctas << " CTAs of " << threads << " threads";
  }
}

TEST_F(KvLayoutTest, GatherRunsBulkCopiesRunsExactly) {
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  if (major < 9) GTEST_SKIP() << "bulk asynchronous copies need sm_90";
  std::mt19937 rng(58);
  // Sources in mapped pinned host memory (the recall path) and in device memory; runs of 16 B to 48 KiB (one to
  // three 16 KiB chunks, partial last chunks), the run list in mapped pinned memory.
  const size_t src_bytes = size_t{4} << 20;
  auto host = PinnedHostBuffer::Create(src_bytes, /*mapped=*/true);
  ASSERT_TRUE(host.ok()) << host.status();
  std::vector<uint8_t> src = RandomBytes(src_bytes, &rng);
  std::memcpy(host->data(), src.data(), src_bytes);
  auto dev_src = DeviceArray<uint8_t>::FromHost(src);
  for (bool from_host : {true, false}) {
    const uint8_t* base = from_host ? host->as<uint8_t>() : dev_src.get();
    for (int32_t n : {1, 7, 97, 600}) {
      for (int32_t ctas : {1, 3, 8, 1000}) {
        DeviceArray<uint8_t> dst(src_bytes);
        dst.Poison();
        auto list = PinnedHostBuffer::Create(n * sizeof(CopyRun), true);
        ASSERT_TRUE(list.ok());
        std::vector<uint8_t> want;
        const int32_t count = RandomRuns(
            &rng, [&] { return rng() % 4 == 0 ? size_t{16} * (1 + rng() % 3072) : size_t{16} * (1 + rng() % 64); },
            base, src, dst.get(), n, list->as<CopyRun>(), &want);
        const CopyRun* runs = list->as<CopyRun>();
        ASSERT_TRUE(GatherRunsBulk(runs, count, ctas, stream()).ok());
        Sync();
        EXPECT_EQ(dst.ToHost(), want) << count << " runs from " << (from_host ? "pinned host" : "device")
                                      << " memory, " << ctas << " CTAs";
      }
    }
  }
  EXPECT_EQ(GatherRunsBulk(nullptr, 1, 1, stream()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GatherRunsBulk(nullptr, -1, 1, stream()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GatherRunsBulk(nullptr, 1, 0, stream()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(GatherRunsBulk(nullptr, 0, 1, stream()).ok());
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
