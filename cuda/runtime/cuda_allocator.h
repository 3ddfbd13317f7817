// File: cuda/runtime/cuda_allocator.h
//
// common/allocator.h implementations backed by CUDA, so kvcache/page_pool.h can carve its GPU pool and its pinned
// CPU pool from them:
//   CudaPinnedAllocator  kPinnedHost  cudaHostAlloc (portable; optionally mapped for zero-copy kernel reads)
//   CudaDeviceAllocator  kDevice      cudaMalloc on a fixed device
// Both return kArenaAlignment-aligned regions (over-allocating when the driver's alignment is smaller) and
// RESOURCE_EXHAUSTED naming the size when memory is short.
//
// Thread-safety: thread-safe.
#ifndef LIVEKV_CUDA_RUNTIME_CUDA_ALLOCATOR_H_
#define LIVEKV_CUDA_RUNTIME_CUDA_ALLOCATOR_H_

#include <cstddef>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"

namespace livekv {
namespace cuda {

class CudaPinnedAllocator : public Allocator {
 public:
  explicit CudaPinnedAllocator(bool mapped = false) : mapped_(mapped) {}
  MemoryKind kind() const override { return MemoryKind::kPinnedHost; }
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* p, size_t bytes) override;

 private:
  const bool mapped_;
  absl::Mutex mu_;
  absl::flat_hash_map<void*, void*> base_of_ ABSL_GUARDED_BY(mu_);  // aligned pointer -> allocation
};

class CudaDeviceAllocator : public Allocator {
 public:
  explicit CudaDeviceAllocator(int device) : device_(device) {}
  MemoryKind kind() const override { return MemoryKind::kDevice; }
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* p, size_t bytes) override;
  int device() const { return device_; }

 private:
  const int device_;
  absl::Mutex mu_;
  absl::flat_hash_map<void*, void*> base_of_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_CUDA_ALLOCATOR_H_
