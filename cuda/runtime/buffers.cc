#include "cuda/runtime/buffers.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(size_t bytes) {
  if (bytes == 0) return DeviceBuffer();
  void* p = nullptr;
  LIVEKV_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc of ", bytes, " bytes")));
  return DeviceBuffer(p, bytes);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    data_ = o.data_, bytes_ = o.bytes_;
    o.data_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (data_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaFree(data_), "cudaFree"));
  data_ = nullptr, bytes_ = 0;
}

absl::StatusOr<PinnedHostBuffer> PinnedHostBuffer::Create(size_t bytes, bool mapped) {
  if (bytes == 0) return PinnedHostBuffer();
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable | (mapped ? cudaHostAllocMapped : 0));
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cudaHostAlloc of ", bytes, " bytes: out of pinned memory"));
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(err);
  return PinnedHostBuffer(p, bytes);
}

PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    data_ = o.data_, bytes_ = o.bytes_;
    o.data_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

absl::StatusOr<void*> PinnedHostBuffer::device_pointer() const {
  void* d = nullptr;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&d, data_, 0));
  return d;
}

void PinnedHostBuffer::Reset() {
  if (data_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaFreeHost(data_), "cudaFreeHost"));
  data_ = nullptr, bytes_ = 0;
}

absl::StatusOr<HostRegistration> HostRegistration::Create(void* ptr, size_t bytes, bool mapped, bool read_only) {
  if (ptr == nullptr || bytes == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("HostRegistration: empty range (ptr %p, bytes %zu)", ptr, bytes));
  }
  const unsigned flags = cudaHostRegisterPortable | (mapped ? cudaHostRegisterMapped : 0u) |
                         (read_only ? cudaHostRegisterReadOnly : 0u);
  const cudaError_t err = cudaHostRegister(ptr, bytes, flags);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cudaHostRegister of ", bytes, " bytes: cannot pin"));
  }
  LIVEKV_RETURN_IF_ERROR(CudaStatus(err, absl::StrFormat("cudaHostRegister(%p, %zu)", ptr, bytes)));
  return HostRegistration(ptr, bytes);
}

HostRegistration& HostRegistration::operator=(HostRegistration&& o) noexcept {
  if (this != &o) {
    Reset();
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

absl::StatusOr<void*> HostRegistration::device_pointer() const {
  void* d = nullptr;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&d, ptr_, 0));
  return d;
}

void HostRegistration::Reset() {
  if (ptr_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaHostUnregister(ptr_), "cudaHostUnregister"));
  ptr_ = nullptr, bytes_ = 0;
}

}  // namespace cuda
}  // namespace livekv
