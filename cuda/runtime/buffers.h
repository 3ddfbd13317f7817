// File: cuda/runtime/buffers.h
//
// Move-only owners of device memory, pinned host memory and a page-locked registration of existing host memory
// (e.g. the store's shared-memory arena, ARCHITECTURE.md §5, so copies from it are DMA at full PCIe rate).
//
//   LIVEKV_ASSIGN_OR_RETURN(DeviceBuffer d, DeviceBuffer::Create(bytes));      // RESOURCE_EXHAUSTED when full
//   LIVEKV_ASSIGN_OR_RETURN(PinnedHostBuffer h, PinnedHostBuffer::Create(bytes));
//   LIVEKV_ASSIGN_OR_RETURN(HostRegistration r, HostRegistration::Create(arena, arena_bytes));
//
// Contents are uninitialised. Thread-safety: like a unique_ptr (the memory itself may be used from any thread).
#ifndef LIVEKV_CUDA_RUNTIME_BUFFERS_H_
#define LIVEKV_CUDA_RUNTIME_BUFFERS_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace livekv {
namespace cuda {

class DeviceBuffer {
 public:
  // cudaMalloc on the current device. bytes == 0 gives an empty buffer (data() == nullptr).
  // RESOURCE_EXHAUSTED naming the size when the device is out of memory.
  static absl::StatusOr<DeviceBuffer> Create(size_t bytes);

  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  DeviceBuffer(void* p, size_t n) : data_(p), bytes_(n) {}
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

class PinnedHostBuffer {
 public:
  // cudaHostAlloc (portable: pinned for every device). `mapped` also maps it into the device address space
  // (zero-copy reads by kernels; see device_pointer()). RESOURCE_EXHAUSTED when the pinned allocation fails.
  static absl::StatusOr<PinnedHostBuffer> Create(size_t bytes, bool mapped = false);

  PinnedHostBuffer() = default;
  ~PinnedHostBuffer() { Reset(); }
  PinnedHostBuffer(PinnedHostBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) {
    o.data_ = nullptr, o.bytes_ = 0;
  }
  PinnedHostBuffer& operator=(PinnedHostBuffer&& o) noexcept;
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // The device-side address of a mapped buffer (with UVA it equals data()).
  absl::StatusOr<void*> device_pointer() const;
  void Reset();

 private:
  PinnedHostBuffer(void* p, size_t n) : data_(p), bytes_(n) {}
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locks [ptr, ptr + bytes) of memory the caller owns (cudaHostRegister, portable); unregisters on
// destruction. REQUIRES: the memory outlives the registration. `read_only` registers with
// cudaHostRegisterReadOnly (the device only reads it: the worker's read-only view of the store's arena).
class HostRegistration {
 public:
  static absl::StatusOr<HostRegistration> Create(void* ptr, size_t bytes, bool mapped = false, bool read_only = false);

  HostRegistration() = default;
  ~HostRegistration() { Reset(); }
  HostRegistration(HostRegistration&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  HostRegistration& operator=(HostRegistration&& o) noexcept;
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  absl::StatusOr<void*> device_pointer() const;
  void Reset();

 private:
  HostRegistration(void* p, size_t n) : ptr_(p), bytes_(n) {}
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_BUFFERS_H_
