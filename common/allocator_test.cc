#include "common/allocator.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

TEST(MemoryKindTest, Names) {
  EXPECT_EQ(MemoryKindName(MemoryKind::kHost), "host");
  EXPECT_EQ(MemoryKindName(MemoryKind::kPinnedHost), "pinned_host");
  EXPECT_EQ(MemoryKindName(MemoryKind::kSharedMemory), "shared_memory");
  EXPECT_EQ(MemoryKindName(MemoryKind::kDevice), "device");
}

void ExpectAlignedWritableZeroed(Allocator& allocator, size_t bytes) {
  absl::StatusOr<void*> p = allocator.Allocate(bytes);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_NE(*p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % kArenaAlignment, 0u) << "bytes=" << bytes;
  uint8_t* bytes_p = static_cast<uint8_t*>(*p);
  // Fresh anonymous memory reads as zero; every byte must be writable.
  EXPECT_EQ(bytes_p[0], 0);
  EXPECT_EQ(bytes_p[bytes - 1], 0);
  std::memset(bytes_p, 0xA5, bytes);
  EXPECT_EQ(bytes_p[0], 0xA5);
  EXPECT_EQ(bytes_p[bytes / 2], 0xA5);
  EXPECT_EQ(bytes_p[bytes - 1], 0xA5);
  allocator.Free(*p, bytes);
}

TEST(HostAllocatorTest, KindIsHost) {
  EXPECT_EQ(HostAllocator().kind(), MemoryKind::kHost);
  EXPECT_FALSE(HostAllocator().prefault());
  EXPECT_TRUE(HostAllocator(/*prefault=*/true).prefault());
}

TEST(HostAllocatorTest, AllocationIsAlignedAndWritable) {
  HostAllocator allocator;
  // Odd sizes, sub-page and multi-page.
  for (size_t bytes : {size_t{1}, size_t{17}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{3 << 20} + 5}) {
    ExpectAlignedWritableZeroed(allocator, bytes);
  }
}

TEST(HostAllocatorTest, PrefaultVariantWorks) {
  HostAllocator allocator(/*prefault=*/true);
  for (size_t bytes : {size_t{1}, size_t{4096}, size_t{8 << 20} + 3}) {
    ExpectAlignedWritableZeroed(allocator, bytes);
  }
}

TEST(HostAllocatorTest, LargeReservationCostsNothingUntilTouched) {
  // 64 GiB of address space with MAP_NORESERVE: must succeed without committing memory. Touch two pages only.
  HostAllocator allocator;
  const size_t bytes = size_t{64} << 30;
  absl::StatusOr<void*> p = allocator.Allocate(bytes);
  ASSERT_TRUE(p.ok()) << p.status();
  uint8_t* b = static_cast<uint8_t*>(*p);
  b[0] = 1;
  b[bytes - 1] = 2;
  EXPECT_EQ(b[0], 1);
  EXPECT_EQ(b[bytes - 1], 2);
  allocator.Free(*p, bytes);
}

TEST(HostAllocatorTest, AbsurdSizeIsResourceExhausted) {
  for (bool prefault : {false, true}) {
    HostAllocator allocator(prefault);
    for (size_t bytes : {size_t{1} << 60, std::numeric_limits<size_t>::max(),
                         std::numeric_limits<size_t>::max() - 4095}) {
      absl::StatusOr<void*> p = allocator.Allocate(bytes);
      ASSERT_FALSE(p.ok()) << "bytes=" << bytes;
      EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
      EXPECT_THAT(std::string(p.status().message()), HasSubstr(std::to_string(bytes)));
    }
  }
}

TEST(HostAllocatorTest, ZeroBytesIsInvalidArgument) {
  HostAllocator allocator;
  EXPECT_EQ(allocator.Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostAllocatorTest, ConcurrentAllocateAndFree) {
  HostAllocator allocator;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&allocator, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t bytes = 4096 * (1 + (i + t) % 7);
        absl::StatusOr<void*> p = allocator.Allocate(bytes);
        ASSERT_TRUE(p.ok()) << p.status();
        static_cast<uint8_t*>(*p)[bytes - 1] = static_cast<uint8_t>(i);
        allocator.Free(*p, bytes);
      }
    });
  }
  for (std::thread& th : threads) th.join();
}

}  // namespace
}  // namespace livekv
