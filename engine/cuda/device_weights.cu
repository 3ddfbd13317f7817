// CudaDummyWeights: DummyHfTensor's generator (engine/weights.cc) evaluated on the device.
#include <cuda_bf16.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/runtime/cuda_status.h"
#include "engine/cuda/cuda_backend.h"

namespace livekv {
namespace {

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// out[i] = bf16(float((2u - 1) * a)), u = (SplitMix64(stream + i) >> 11) * 2^-53: the same double arithmetic as the
// host generator, then round-to-nearest-even to bf16 as ConvertFromF32 does.
__global__ void DummyFillKernel(__nv_bfloat16* out, int64_t n, uint64_t stream, double a) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double u = static_cast<double>(SplitMix64(stream + static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
    out[i] = __float2bfloat16_rn(static_cast<float>((2.0 * u - 1.0) * a));
  }
}

__global__ void ConstantFillKernel(__nv_bfloat16* out, int64_t n, float value) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(value);
  }
}

}  // namespace

absl::StatusOr<ModelWeights> CudaDummyWeights(const ModelConfig& config, uint64_t seed, CudaBackend* backend,
                                              float stddev) {
  ModelWeights w;
  LIVEKV_ASSIGN_OR_RETURN(std::vector<TensorView> views, AllocateWeightLayout(config, backend, &w));
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  const float a = stddev * std::sqrt(3.0f);
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorView& v = views[i];
    if (v.dtype != DType::kBF16) return absl::InternalError("CudaDummyWeights: weights are not BF16");
    const int64_t n = v.numel();
    if (n == 0) continue;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8192));
    if (specs[i].is_norm) {
      ConstantFillKernel<<<blocks, 256, 0, backend->stream()>>>(v.as<__nv_bfloat16>(), n, 1.0f);
    } else {
      DummyFillKernel<<<blocks, 256, 0, backend->stream()>>>(v.as<__nv_bfloat16>(), n, DummyTensorStream(seed, i),
                                                             static_cast<double>(a));
    }
    LIVEKV_RETURN_IF_ERROR(cuda::LaunchStatus("DummyFillKernel"));
  }
  LIVEKV_RETURN_IF_ERROR(backend->Synchronize());
  return w;
}

}  // namespace livekv
