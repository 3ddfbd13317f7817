// File: cuda/ops/gemm.h
//
// The nn.Linear product on tensor cores through cuBLASLt: out[n][m] = x[n][k] · w[m][k]^T (+ bias[m]), bf16
// inputs, fp32 accumulation, bf16 output (activations) or fp32 output (logits). Plans (cuBLASLt descriptors and
// the heuristic's algorithm) are cached per shape, alignment and output type, so steady-state calls cost one
// cublasLtMatmul. Shapes cuBLASLt has no algorithm for (e.g. odd leading dimensions on some versions) fall back
// to cublasGemmEx; the bias is then added by a small kernel.
//
// Numerics: fp32 accumulation; a bf16 output is rounded once without bias. With a bias and bf16 output, the
// cuBLASLt bias epilogue (what PyTorch's addmm uses for nn.Linear) may round x.w^T to bf16 before adding the bias
// (seen on an H100 with cuBLAS 13 for some shapes: up to one bf16 ulp of the product's magnitude), as does the
// fallback. fp32 outputs (logits) get the bias added in fp32.
//
//   Gemm gemm(&blas);  // per thread, like the handle
//   LIVEKV_RETURN_IF_ERROR(gemm.Linear({x, n, k, w, m, bias, out, GemmOutput::kBf16}, stream));
//
// Thread-safety: thread-compatible (one thread at a time, like the BlasHandle it borrows).
#ifndef LIVEKV_CUDA_OPS_GEMM_H_
#define LIVEKV_CUDA_OPS_GEMM_H_

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "cuda/runtime/blas_handle.h"

namespace livekv {
namespace cuda {

enum class GemmOutput { kBf16, kF32 };

struct LinearArgs {
  const __nv_bfloat16* x = nullptr;  // [n][k]
  int64_t n = 0;                     // rows (tokens); 0 is a no-op
  int64_t k = 0;                     // in_features
  const __nv_bfloat16* w = nullptr;  // [m][k] (nn.Linear weight)
  int64_t m = 0;                     // out_features
  const __nv_bfloat16* bias = nullptr;  // [m] or null
  void* out = nullptr;               // [n][m], bf16 or fp32 per `output`; must not alias x or w
  GemmOutput output = GemmOutput::kBf16;
};

// The decode step's fusions around a single-row product (the GEMV kernel, cuda/kernels/gemv.cuh), each replacing
// a separate small kernel: the product's x computed on the fly from the previous op's input, and the residual add.
struct GemvFusion {
  enum class Prologue { kNone, kRmsNorm, kSwiGlu };
  // kRmsNorm: x' = norm_weight * bf16(x / sqrt(mean(x^2) + eps)) (cuda::RmsNorm's formula, x [k]);
  // kSwiGlu:  x' = bf16(silu(x[0, k)) * x[k, 2k)) (cuda::SwiGlu's formula, x = gate_up [2k]).
  Prologue prologue = Prologue::kNone;
  const __nv_bfloat16* norm_weight = nullptr;  // [k]
  float eps = 0.0f;
  __nv_bfloat16* x_out = nullptr;     // [k] or null: receives x' (what the unfused op writes); must not alias x
  __nv_bfloat16* residual = nullptr;  // [m] or null: residual = bf16(residual + bf16(y)) (cuda::AddInPlace's
                                      // formula), bf16 output only; out (may then be null) still receives y
  // RoPE epilogue (cuda::SplitQkvRope's formulas for one token at position rope_pos): with rope_head_dim > 0 the
  // product is the fused QKV projection, m = (rope_q_heads + 2 rope_kv_heads) * rope_head_dim; q [hq][d] and
  // k [hkv][d] receive the rotated heads, v [hkv][d] the rest; out (may be null) still receives y. bf16 output, no
  // residual; q, k, v must not alias x, out or each other. inv_freq: device fp32 [d / 2].
  int32_t rope_head_dim = 0;
  int32_t rope_q_heads = 0, rope_kv_heads = 0;
  const float* inv_freq = nullptr;
  int64_t rope_pos = 0;
  __nv_bfloat16* q = nullptr;
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
};

class Gemm {
 public:
  // `blas` is borrowed and must outlive this object; its workspace is used by every call.
  explicit Gemm(BlasHandle* blas) : blas_(blas) {}
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // INVALID_ARGUMENT naming the value for non-positive k or m, negative n, or null pointers.
  absl::Status Linear(const LinearArgs& args, cudaStream_t stream);

  // Calls that ran through the cublasGemmEx fallback (tests and benchmarks look at it).
  int64_t fallback_calls() const { return fallback_calls_; }
  // Single-row products (n == 1, k % 8 == 0, k <= 32768, x and w 16-byte aligned) run the GEMV kernel of
  // cuda/kernels/gemv.cuh instead of cuBLASLt (fp32 accumulation, bias added in fp32, one rounding). Benchmarks
  // switch it off to compare.
  void set_use_gemv(bool on) { use_gemv_ = on; }
  // Whether Linear(args) runs the GEMV kernel.
  bool UsesGemv(const LinearArgs& args) const;
  // The product with fusions. INVALID_ARGUMENT unless UsesGemv(args) (k is the product's width; with kSwiGlu, x
  // holds 2k values), for a residual with fp32 output, for misaligned fusion operands, or for a RoPE epilogue whose
  // shape does not match m. The GEMV kernels launch
  // with programmatic dependent launch where the calling thread enabled it (cuda/runtime/launch.h).
  absl::Status FusedGemv(const LinearArgs& args, const GemvFusion& fusion, cudaStream_t stream);
  int64_t gemv_calls() const { return gemv_calls_; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
    bool usable = false;  // false: no cuBLASLt algorithm, use the fallback
  };
  // n, k, m, output, bias epilogue, alignment of x, w, out, bias.
  using Key = std::tuple<int64_t, int64_t, int64_t, int, bool, int, int, int, int>;

  absl::StatusOr<Plan*> GetPlan(const Key& key);
  absl::Status Fallback(const LinearArgs& a, cudaStream_t stream);
  absl::Status Gemv(const LinearArgs& a, cudaStream_t stream);

  BlasHandle* blas_;
  absl::flat_hash_map<Key, Plan> plans_;
  int64_t fallback_calls_ = 0;
  bool use_gemv_ = true;
  int64_t gemv_calls_ = 0;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_OPS_GEMM_H_
