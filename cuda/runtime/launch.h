// File: cuda/runtime/launch.h
//
// Programmatic dependent launch (PDL, Hopper): a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may be scheduled while the previous kernel of its stream is still running; it must call GridDependencyWait()
// (cuda/kernels/common.cuh) before reading anything that kernel writes. Launchers whose kernels do so use
// LaunchKernel() below, which adds the attribute when the calling thread has PDL switched on (ScopedPdl); every
// other launch is ordered as usual. The decode step of the CUDA backend switches it on, so each of its kernels is
// resident and waiting (or already prefetching weights) when its predecessor finishes, instead of being launched
// then.
//
//   ScopedPdl pdl(true);                          // this thread, until the scope ends
//   LIVEKV_RETURN_IF_ERROR(LaunchKernel("gemv", Kernel<...>, grid, block, smem, stream, params));
//
// Thread-safety: the switch is per thread (worker threads that launch their own kernels are unaffected).
#ifndef LIVEKV_CUDA_RUNTIME_LAUNCH_H_
#define LIVEKV_CUDA_RUNTIME_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {

// Whether launches through LaunchKernel on this thread carry the PDL attribute (default off).
bool PdlEnabled();
void SetPdlEnabled(bool on);

// Sets the calling thread's PDL switch for the scope and restores the previous value after it.
class ScopedPdl {
 public:
  explicit ScopedPdl(bool on) : previous_(PdlEnabled()) { SetPdlEnabled(on); }
  ~ScopedPdl() { SetPdlEnabled(previous_); }
  ScopedPdl(const ScopedPdl&) = delete;
  ScopedPdl& operator=(const ScopedPdl&) = delete;

 private:
  bool previous_;
};

#ifdef __CUDACC__
}  // namespace cuda
}  // namespace livekv
#include <cuda_runtime.h>  // the templated cudaLaunchKernelEx
namespace livekv {
namespace cuda {

// Launches `kernel` (whose device code calls GridDependencyWait() before touching its predecessor's outputs) with
// the PDL attribute when PdlEnabled(), plainly otherwise. Returns the launch's status named after `name`.
template <typename... KernelArgs, typename... Args>
absl::Status LaunchKernel(absl::string_view name, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args&&... args) {
  if (!PdlEnabled()) {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    return LaunchStatus(name);
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) return CudaStatus(err, name);
  return LaunchStatus(name);
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_LAUNCH_H_
