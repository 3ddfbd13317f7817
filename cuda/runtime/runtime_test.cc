#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/runtime/blas_handle.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_allocator.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/stream.h"
#include "cuda/testing/test_util.h"
#include "kvcache/page_pool.h"

namespace livekv {
namespace cuda {
namespace {

using testing::GpuTest;

// These run everywhere, GPU or not.
TEST(CudaStatusTest, MapsErrorsToRetryableCodes) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "x").ok());
  EXPECT_EQ(CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CudaStatus(cudaErrorInsufficientDriver, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaStatus(cudaErrorInvalidValue, "x").code(), absl::StatusCode::kInvalidArgument);
  const absl::Status s = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc of 7 bytes");
  EXPECT_NE(s.message().find("cudaMalloc of 7 bytes"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("cudaErrorMemoryAllocation"), absl::string_view::npos) << s;
  EXPECT_EQ(CublasStatus(CUBLAS_STATUS_ALLOC_FAILED, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CublasStatus(CUBLAS_STATUS_NOT_INITIALIZED, "x").code(), absl::StatusCode::kUnavailable);
}

TEST(CudaStatusTest, StickyErrorsAreRecognised) {
  EXPECT_TRUE(IsStickyError(cudaErrorIllegalAddress));
  EXPECT_TRUE(IsStickyError(cudaErrorLaunchFailure));
  EXPECT_FALSE(IsStickyError(cudaErrorMemoryAllocation));
  EXPECT_FALSE(IsStickyError(cudaErrorInvalidValue));
}

TEST(CudaStatusDeathTest, StickyErrorCrashes) {
  EXPECT_DEATH((void)CudaStatus(cudaErrorIllegalAddress, "kernel"), "unusable");
}

TEST(DeviceTest, CountIsZeroOrMoreWithoutCrashing) {
  const int n = DeviceCount();
  EXPECT_GE(n, 0);
  if (n == 0) {
    EXPECT_EQ(GetDeviceInfo(0).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

class RuntimeTest : public GpuTest {};

TEST_F(RuntimeTest, DeviceInfo) {
  auto info = GetDeviceInfo(0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->multiprocessors, 0);
  EXPECT_GT(info->total_memory, size_t{1} << 30);
  EXPECT_GE(info->cc_major, 9) << "the kernels are built for sm_90a";
  std::printf("device: %s\n", DescribeDevice(*info).c_str());
  EXPECT_EQ(GetDeviceInfo(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetDeviceInfo(DeviceCount()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RuntimeTest, BuffersRoundTrip) {
  const size_t n = 1 << 20;
  auto dev = DeviceBuffer::Create(n);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto pinned = PinnedHostBuffer::Create(n);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  std::vector<uint8_t> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<uint8_t>(i * 131 + 7);
  std::memcpy(pinned->data(), host.data(), n);
  ASSERT_TRUE(CudaStatus(cudaMemcpyAsync(dev->data(), pinned->data(), n, cudaMemcpyHostToDevice, stream()), "h2d").ok());
  std::memset(host.data(), 0, n);
  ASSERT_TRUE(CudaStatus(cudaMemcpyAsync(pinned->data(), dev->data(), 0, cudaMemcpyDeviceToHost, stream()), "0").ok());
  std::vector<uint8_t> back(n);
  auto pinned2 = PinnedHostBuffer::Create(n);
  ASSERT_TRUE(pinned2.ok());
  ASSERT_TRUE(CudaStatus(cudaMemcpyAsync(pinned2->data(), dev->data(), n, cudaMemcpyDeviceToHost, stream()), "d2h").ok());
  Sync();
  EXPECT_EQ(std::memcmp(pinned2->data(), pinned->data(), n), 0);

  // Moves transfer ownership; the moved-from buffer is empty.
  DeviceBuffer moved = std::move(*dev);
  EXPECT_EQ(dev->data(), nullptr);
  EXPECT_EQ(moved.bytes(), n);
  auto empty = DeviceBuffer::Create(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->data(), nullptr);
}

TEST_F(RuntimeTest, OutOfMemoryIsResourceExhausted) {
  auto huge = DeviceBuffer::Create(size_t{1} << 50);  // 1 PiB
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  // The context is still usable.
  auto small = DeviceBuffer::Create(4096);
  EXPECT_TRUE(small.ok()) << small.status();
  CudaDeviceAllocator device_alloc(0);
  auto arena = device_alloc.Allocate(size_t{1} << 50);
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted) << arena.status();
}

TEST_F(RuntimeTest, HostRegistrationOfExistingMemory) {
  const size_t n = size_t{4} << 20;
  HostAllocator host;
  auto arena = host.Allocate(n);
  ASSERT_TRUE(arena.ok());
  std::memset(*arena, 0x5a, n);
  {
    auto reg = HostRegistration::Create(*arena, n, /*mapped=*/true);
    ASSERT_TRUE(reg.ok()) << reg.status();
    auto dptr = reg->device_pointer();
    ASSERT_TRUE(dptr.ok()) << dptr.status();
    auto dev = DeviceBuffer::Create(n);
    ASSERT_TRUE(dev.ok());
    ASSERT_TRUE(CudaStatus(cudaMemcpyAsync(dev->data(), *arena, n, cudaMemcpyHostToDevice, stream()), "h2d").ok());
    std::vector<uint8_t> back(n);
    Sync();
    ASSERT_TRUE(CudaStatus(cudaMemcpy(back.data(), dev->data(), n, cudaMemcpyDeviceToHost), "d2h").ok());
    EXPECT_EQ(back[0], 0x5a);
    EXPECT_EQ(back[n - 1], 0x5a);
    // Registering the same range twice is a caller error, reported, not a crash.
    auto again = HostRegistration::Create(*arena, n);
    EXPECT_EQ(again.status().code(), absl::StatusCode::kInvalidArgument) << again.status();
  }
  EXPECT_EQ(HostRegistration::Create(nullptr, 10).status().code(), absl::StatusCode::kInvalidArgument);
  host.Free(*arena, n);
}

TEST_F(RuntimeTest, EventsOrderAndTime) {
  auto start = Event::Create(/*timing=*/true);
  auto end = Event::Create(/*timing=*/true);
  ASSERT_TRUE(start.ok() && end.ok());
  auto buf = DeviceBuffer::Create(size_t{64} << 20);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(start->Record(stream()).ok());
  ASSERT_TRUE(CudaStatus(cudaMemsetAsync(buf->data(), 1, buf->bytes(), stream()), "memset").ok());
  ASSERT_TRUE(end->Record(stream()).ok());
  ASSERT_TRUE(end->Synchronize().ok());
  auto done = end->Query();
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  auto ms = Event::ElapsedMs(*start, *end);
  ASSERT_TRUE(ms.ok()) << ms.status();
  EXPECT_GE(*ms, 0.0f);
  auto other = Stream::Create();
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->WaitEvent(end->get()).ok());
  EXPECT_TRUE(other->Synchronize().ok());
}

TEST_F(RuntimeTest, BlasHandle) {
  auto blas = BlasHandle::Create(size_t{4} << 20);
  ASSERT_TRUE(blas.ok()) << blas.status();
  EXPECT_NE(blas->lt(), nullptr);
  EXPECT_EQ(blas->workspace_bytes(), size_t{4} << 20);
  auto h = blas->blas(stream());
  ASSERT_TRUE(h.ok()) << h.status();
  BlasHandle moved = std::move(*blas);
  EXPECT_NE(moved.lt(), nullptr);
}

TEST_F(RuntimeTest, AllocatorsFeedPagePools) {
  CudaDeviceAllocator device_alloc(0);
  CudaPinnedAllocator pinned_alloc;
  EXPECT_EQ(device_alloc.kind(), MemoryKind::kDevice);
  EXPECT_EQ(pinned_alloc.kind(), MemoryKind::kPinnedHost);
  EXPECT_EQ(device_alloc.Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  for (Allocator* a : std::vector<Allocator*>{&device_alloc, &pinned_alloc}) {
    PagePool::Options o;
    o.page_bytes = 16384;
    o.capacity_bytes = size_t{16} << 20;
    auto pool = PagePool::Create(a, o);
    ASSERT_TRUE(pool.ok()) << pool.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*pool)->base()) % kArenaAlignment, 0u);
    auto h = (*pool)->Insert((*pool)->NewKey(), 3, /*evictable=*/false);
    ASSERT_TRUE(h.ok()) << h.status();
    // The pages are usable by the copy engine in either case.
    auto src = DeviceBuffer::Create(h->bytes());
    ASSERT_TRUE(src.ok());
    ASSERT_TRUE(CudaStatus(cudaMemsetAsync(src->data(), 7, h->bytes(), stream()), "memset").ok());
    ASSERT_TRUE(CudaStatus(cudaMemcpyAsync(h->data(), src->data(), h->bytes(), cudaMemcpyDefault, stream()), "copy").ok());
    Sync();
  }
}

}  // namespace
}  // namespace cuda
}  // namespace livekv
