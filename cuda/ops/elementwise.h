// File: cuda/ops/elementwise.h
//
// Launchers of the row-wise and element-wise layer kernels (cuda/kernels/elementwise.cuh). All tensors are bf16
// device memory, row-major and contiguous; arithmetic is fp32 with one rounding per output. Each call validates
// its sizes (INVALID_ARGUMENT naming the value), enqueues on `stream` and returns without waiting. n == 0 (no
// rows) is valid and launches nothing. Outputs must not alias inputs unless stated.
#ifndef LIVEKV_CUDA_OPS_ELEMENTWISE_H_
#define LIVEKV_CUDA_OPS_ELEMENTWISE_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace livekv {
namespace cuda {

using bf16 = __nv_bfloat16;

// out[i] = table[ids[i]] for i < n. ids: device int32 [n]; ids outside [0, vocab) give zero rows (validate ids
// on the host first: the kernel cannot report them). table [vocab][hidden], out [n][hidden].
absl::Status EmbeddingGather(const int32_t* ids, int64_t n, const bf16* table, int64_t vocab, int64_t hidden,
                             bf16* out, cudaStream_t stream);

// out = weight * bf16(x / sqrt(mean(x^2) + eps)) per row. x, out [rows][hidden] (may alias); weight [hidden].
absl::Status RmsNorm(const bf16* x, const bf16* weight, int64_t rows, int64_t hidden, float eps, bf16* out,
                     cudaStream_t stream);

// Splits qkv [n][(hq + 2 hkv) * head_dim] into q [n][hq][d], k [n][hkv][d], v [n][hkv][d] and applies rotate-half
// RoPE to q and k with angle = float(position) * inv_freq[i] (engine/rope.h). inv_freq: device fp32
// [head_dim / 2]. positions: device int32 [n], or null for pos0 + row. head_dim must be even.
absl::Status SplitQkvRope(const bf16* qkv, int64_t n, int32_t hq, int32_t hkv, int32_t head_dim,
                          const float* inv_freq, const int32_t* positions, int64_t pos0, bf16* q, bf16* k, bf16* v,
                          cudaStream_t stream);

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][inter + i]. gate_up [rows][2 inter], out [rows][inter].
absl::Status SwiGlu(const bf16* gate_up, int64_t rows, int64_t inter, bf16* out, cudaStream_t stream);

// x += y over n elements (the residual add). x and y must not overlap unless equal.
absl::Status AddInPlace(bf16* x, const bf16* y, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_ELEMENTWISE_H_
