#include "cuda/runtime/blas_handle.h"

#include "common/logging.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {

absl::StatusOr<BlasHandle> BlasHandle::Create(size_t workspace_bytes) {
  BlasHandle h;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&h.device_));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.blas_));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&h.lt_));
  LIVEKV_ASSIGN_OR_RETURN(h.workspace_, DeviceBuffer::Create(workspace_bytes));
  return h;
}

BlasHandle::~BlasHandle() { Reset(); }

BlasHandle::BlasHandle(BlasHandle&& o) noexcept
    : blas_(o.blas_), lt_(o.lt_), workspace_(std::move(o.workspace_)), device_(o.device_) {
  o.blas_ = nullptr, o.lt_ = nullptr, o.device_ = -1;
}

BlasHandle& BlasHandle::operator=(BlasHandle&& o) noexcept {
  if (this != &o) {
    Reset();
    blas_ = o.blas_, lt_ = o.lt_, device_ = o.device_;
    workspace_ = std::move(o.workspace_);
    o.blas_ = nullptr, o.lt_ = nullptr, o.device_ = -1;
  }
  return *this;
}

void BlasHandle::Reset() {
  if (blas_ != nullptr) LIVEKV_CHECK_OK(CublasStatus(cublasDestroy(blas_), "cublasDestroy"));
  if (lt_ != nullptr) LIVEKV_CHECK_OK(CublasStatus(cublasLtDestroy(lt_), "cublasLtDestroy"));
  blas_ = nullptr, lt_ = nullptr;
  workspace_.Reset();
}

absl::StatusOr<cublasHandle_t> BlasHandle::blas(cudaStream_t stream) {
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas_, stream));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(blas_, workspace_.data(), workspace_.bytes()));
  return blas_;
}

}  // namespace cuda
}  // namespace livekv
