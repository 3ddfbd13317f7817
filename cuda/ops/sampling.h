// File: cuda/ops/sampling.h
//
// Token sampling on the device from fp32 logits [rows][stride] (the fp32 output of the LM-head GEMM), one token
// per row, no host round trip for the logits (cuda/kernels/sampling.cuh has the exact definitions).
#ifndef LIVEKV_CUDA_OPS_SAMPLING_H_
#define LIVEKV_CUDA_OPS_SAMPLING_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

// out[r] = argmax_i logits[r][i], the lowest index on ties (engine/sampler.h's greedy); NaNs are ignored.
absl::Status SampleArgMax(const float* logits, int32_t rows, int64_t stride, int32_t vocab, int32_t* out,
                          cudaStream_t stream);

size_t SampleTopPWorkspaceBytes(int32_t rows, int32_t vocab);

// Temperature (> 0) and nucleus (top_p in (0, 1]) sampling with caller-given uniforms u[r] in [0, 1) (device
// fp32 [rows]); temperature == 0 is greedy (SampleArgMax). Deterministic given u.
absl::Status SampleTopP(const float* logits, int32_t rows, int64_t stride, int32_t vocab, float temperature,
                        float top_p, const float* uniforms, int32_t* out, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_SAMPLING_H_
