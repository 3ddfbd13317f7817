#include "cuda/runtime/device.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {

int DeviceCount() {
  int count = 0;  // cudaGetDeviceCount leaves it unchanged on error (no driver)
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<DeviceInfo> GetDeviceInfo(int device) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("device ", device, " out of range: ", count, " device(s)"));
  }
  cudaDeviceProp p;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&p, device));
  DeviceInfo info;
  info.ordinal = device;
  info.name = p.name;
  info.cc_major = p.major;
  info.cc_minor = p.minor;
  info.multiprocessors = p.multiProcessorCount;
  info.total_memory = p.totalGlobalMem;
  info.l2_bytes = static_cast<size_t>(p.l2CacheSize);
  info.max_shared_per_block_optin = p.sharedMemPerBlockOptin;
  info.shared_per_multiprocessor = p.sharedMemPerMultiprocessor;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaRuntimeGetVersion(&info.runtime_version));
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaDriverGetVersion(&info.driver_version));
  return info;
}

absl::StatusOr<bool> CurrentDeviceIsSm90() {
  int device = 0, major = 0, minor = 0;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

std::string DescribeDevice(const DeviceInfo& i) {
  return absl::StrFormat("%s (sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB, smem/block %zu KiB, driver %d, runtime %d)",
                         i.name, i.cc_major, i.cc_minor, i.multiprocessors,
                         static_cast<double>(i.total_memory) / (1 << 30), static_cast<double>(i.l2_bytes) / (1 << 20),
                         i.max_shared_per_block_optin / 1024, i.driver_version, i.runtime_version);
}

ScopedDevice::ScopedDevice(int device) {
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    (void)cudaGetLastError();
    previous_ = -1;
  }
  if (device != previous_ && cudaSetDevice(device) != cudaSuccess) (void)cudaGetLastError();
}

ScopedDevice::~ScopedDevice() {
  if (previous_ >= 0) {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
}

}  // namespace cuda
}  // namespace livekv
