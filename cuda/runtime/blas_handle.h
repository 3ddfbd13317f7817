// File: cuda/runtime/blas_handle.h
//
// One cuBLAS handle and one cuBLASLt handle with the workspace they use, for one device and one thread (cuBLAS
// handles are not meant to be shared between threads that issue concurrently). Owned by whoever owns the
// thread's streams (the CUDA backend); borrowed by the GEMM op (cuda/ops/gemm.h), which passes the stream with
// every call.
//
//   LIVEKV_ASSIGN_OR_RETURN(BlasHandle blas, BlasHandle::Create(/*workspace_bytes=*/32 << 20));
//
// Thread-safety: thread-compatible (one thread at a time).
#ifndef LIVEKV_CUDA_RUNTIME_BLAS_HANDLE_H_
#define LIVEKV_CUDA_RUNTIME_BLAS_HANDLE_H_

#include <cublasLt.h>
#include <cublas_v2.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/runtime/buffers.h"

namespace livekv {
namespace cuda {

class BlasHandle {
 public:
  // Creates both handles on the current device and a device workspace of `workspace_bytes` (cuBLAS
  // recommends 32 MiB on Hopper). UNAVAILABLE without a device; RESOURCE_EXHAUSTED without memory.
  static absl::StatusOr<BlasHandle> Create(size_t workspace_bytes = size_t{32} << 20);

  BlasHandle() = default;
  ~BlasHandle();
  BlasHandle(BlasHandle&& o) noexcept;
  BlasHandle& operator=(BlasHandle&& o) noexcept;
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;

  cublasLtHandle_t lt() const { return lt_; }
  // The classic handle, bound to `stream` and to this handle's workspace (cublasSetStream resets the
  // workspace, so both are set on every call).
  absl::StatusOr<cublasHandle_t> blas(cudaStream_t stream);
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  int device() const { return device_; }

 private:
  void Reset();
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer workspace_;
  int device_ = -1;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_BLAS_HANDLE_H_
