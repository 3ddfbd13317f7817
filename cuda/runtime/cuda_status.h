// File: cuda/runtime/cuda_status.h
//
// CUDA and cuBLAS errors as absl::Status, following STYLE.md's crash policy:
//   - errors that leave the CUDA context unusable ("sticky": illegal address, launch failure, illegal
//     instruction, misaligned address, ECC, hardware stack error, ...) CHECK-crash with the call and the error;
//   - out of memory is RESOURCE_EXHAUSTED (retryable, the caller may evict and try again);
//   - no device / insufficient driver is UNAVAILABLE;
//   - bad arguments are INVALID_ARGUMENT; everything else is INTERNAL.
// Every message names the call that failed and the CUDA error's name and text.
//
//   LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream));
//   kernel<<<grid, block, 0, stream>>>(...);
//   LIVEKV_RETURN_IF_ERROR(livekv::cuda::LaunchStatus("rms_norm"));
#ifndef LIVEKV_CUDA_RUNTIME_CUDA_STATUS_H_
#define LIVEKV_CUDA_RUNTIME_CUDA_STATUS_H_

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace livekv {
namespace cuda {

// True for errors after which the context cannot be used any more.
bool IsStickyError(cudaError_t err);

// OkStatus for cudaSuccess; otherwise the status described above (CHECK-crashes on sticky errors). Clears the
// runtime's last-error slot for non-sticky errors so later calls do not report it again.
absl::Status CudaStatus(cudaError_t err, absl::string_view what);

// The status of the last kernel launch on this thread (cudaGetLastError), named after `kernel`. A launch
// configuration error (too many resources, invalid configuration) is INTERNAL: the launcher computed it.
absl::Status LaunchStatus(absl::string_view kernel);

// cuBLAS / cuBLASLt status as absl::Status: ALLOC_FAILED is RESOURCE_EXHAUSTED, NOT_INITIALIZED UNAVAILABLE,
// INVALID_VALUE and NOT_SUPPORTED INVALID_ARGUMENT, EXECUTION_FAILED crashes (a kernel fault), others INTERNAL.
absl::Status CublasStatus(cublasStatus_t st, absl::string_view what);

}  // namespace cuda
}  // namespace livekv

#define LIVEKV_CUDA_RETURN_IF_ERROR(expr) LIVEKV_RETURN_IF_ERROR(::livekv::cuda::CudaStatus((expr), #expr))
#define LIVEKV_CUBLAS_RETURN_IF_ERROR(expr) LIVEKV_RETURN_IF_ERROR(::livekv::cuda::CublasStatus((expr), #expr))

#endif  // LIVEKV_CUDA_RUNTIME_CUDA_STATUS_H_
