// File: cuda/runtime/device.h
//
// Device discovery and properties. Read limits (SM count, L2, shared memory per block) from here at start-up
// instead of hard-coding an H100's.
#ifndef LIVEKV_CUDA_RUNTIME_DEVICE_H_
#define LIVEKV_CUDA_RUNTIME_DEVICE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace livekv {
namespace cuda {

// Number of CUDA devices; 0 (not an error) when there is no driver or no device, so callers can skip.
int DeviceCount();

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  size_t max_shared_per_block_optin = 0;  // dynamic shared memory a kernel may opt in to
  size_t shared_per_multiprocessor = 0;
  int runtime_version = 0;  // cudaRuntimeGetVersion, e.g. 13000
  int driver_version = 0;   // cudaDriverGetVersion
};

// Properties of `device`. INVALID_ARGUMENT for an ordinal out of range; UNAVAILABLE without a driver.
absl::StatusOr<DeviceInfo> GetDeviceInfo(int device);

// Whether the current device is sm_90 (Hopper), so it runs the build's sm_90a code with wgmma (the k-means
// assignment's and the prefill attention's fastest kernels). The build's compute_90 PTX, which newer devices
// compile at load time, has no wgmma: kernels that use it are picked only where this is true.
absl::StatusOr<bool> CurrentDeviceIsSm90();

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB, L2 50 MiB, driver 13000, runtime 13000)".
std::string DescribeDevice(const DeviceInfo& info);

// Makes `device` current for the calling thread for the guard's lifetime, then restores the previous one.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_DEVICE_H_
