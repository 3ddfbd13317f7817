#include "cuda/runtime/cuda_allocator.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"

namespace livekv {
namespace cuda {
namespace {

bool Aligned(void* p) { return reinterpret_cast<uintptr_t>(p) % kArenaAlignment == 0; }

void* AlignUp(void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<void*>((v + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment);
}

// Allocates with `alloc`, retrying with kArenaAlignment extra bytes when the result is not aligned; records
// the base of an adjusted allocation.
template <typename AllocFn, typename FreeFn>
absl::StatusOr<void*> AllocateAligned(size_t bytes, const char* what, AllocFn alloc, FreeFn free_fn,
                                      absl::Mutex* mu, absl::flat_hash_map<void*, void*>* base_of) {
  if (bytes == 0) return absl::InvalidArgumentError(absl::StrCat(what, ": cannot allocate 0 bytes"));
  void* p = nullptr;
  cudaError_t err = alloc(&p, bytes);
  if (err == cudaSuccess && !Aligned(p)) {
    LIVEKV_CHECK_OK(CudaStatus(free_fn(p), what));
    err = alloc(&p, bytes + kArenaAlignment);
    if (err == cudaSuccess) {
      void* aligned = AlignUp(p);
      absl::MutexLock lock(mu);
      (*base_of)[aligned] = p;
      return aligned;
    }
  }
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory allocating ", bytes, " bytes"));
  }
  LIVEKV_RETURN_IF_ERROR(CudaStatus(err, absl::StrCat(what, " of ", bytes, " bytes")));
  return p;
}

void* BaseOf(void* p, absl::Mutex* mu, absl::flat_hash_map<void*, void*>* base_of) {
  absl::MutexLock lock(mu);
  auto it = base_of->find(p);
  if (it == base_of->end()) return p;
  void* base = it->second;
  base_of->erase(it);
  return base;
}

}  // namespace

absl::StatusOr<void*> CudaPinnedAllocator::Allocate(size_t bytes) {
  const unsigned flags = cudaHostAllocPortable | (mapped_ ? cudaHostAllocMapped : 0u);
  return AllocateAligned(
      bytes, "CudaPinnedAllocator: cudaHostAlloc", [flags](void** p, size_t n) { return cudaHostAlloc(p, n, flags); },
      [](void* p) { return cudaFreeHost(p); }, &mu_, &base_of_);
}

void CudaPinnedAllocator::Free(void* p, size_t /*bytes*/) {
  if (p == nullptr) return;
  LIVEKV_CHECK_OK(CudaStatus(cudaFreeHost(BaseOf(p, &mu_, &base_of_)), "CudaPinnedAllocator: cudaFreeHost"));
}

absl::StatusOr<void*> CudaDeviceAllocator::Allocate(size_t bytes) {
  ScopedDevice on(device_);
  return AllocateAligned(
      bytes, "CudaDeviceAllocator: cudaMalloc", [](void** p, size_t n) { return cudaMalloc(p, n); },
      [](void* p) { return cudaFree(p); }, &mu_, &base_of_);
}

void CudaDeviceAllocator::Free(void* p, size_t /*bytes*/) {
  if (p == nullptr) return;
  ScopedDevice on(device_);
  LIVEKV_CHECK_OK(CudaStatus(cudaFree(BaseOf(p, &mu_, &base_of_)), "CudaDeviceAllocator: cudaFree"));
}

}  // namespace cuda
}  // namespace livekv
