#include "cuda/bench/fill.h"

#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {
namespace {

__device__ __forceinline__ float Hash01(uint64_t seed, int64_t i) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__global__ void FillKernel(T* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = (2.0f * Hash01(seed, i) - 1.0f) * scale;
    if constexpr (sizeof(T) == 2) {
      x[i] = __float2bfloat16_rn(v);
    } else {
      x[i] = v;
    }
  }
}

__global__ void EmptyKernel() {}

__global__ void SpinKernel(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

}  // namespace

absl::Status LaunchEmpty(cudaStream_t stream) {
  EmptyKernel<<<1, 32, 0, stream>>>();
  return LaunchStatus("EmptyKernel");
}

absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  const absl::Status copied = CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  if (!copied.ok()) return copied;
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize after cudaMemcpy");
}

absl::Status LaunchSpin(double microseconds, cudaStream_t stream) {
  SpinKernel<<<1, 32, 0, stream>>>(static_cast<uint64_t>(microseconds * 1e3));
  return LaunchStatus("SpinKernel");
}

absl::Status FillUniformBf16(__nv_bfloat16* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(x, n, seed, scale);
  return LaunchStatus("FillKernel");
}

absl::Status FillUniformF32(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(x, n, seed, scale);
  return LaunchStatus("FillKernel");
}

}  // namespace cuda
}  // namespace livekv
