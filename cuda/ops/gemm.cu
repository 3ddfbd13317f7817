#include "cuda/ops/gemm.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/elementwise.cuh"
#include "cuda/kernels/gemv.cuh"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

// Largest power of two <= 256 dividing the address (cuBLASLt's alignment preferences are in bytes).
int AlignmentOf(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

template <typename T>
absl::Status LaunchAddBias(T* out, const __nv_bfloat16* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t total = rows * cols;
  const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>(kn::CeilDiv(total, 256), 1, 8192));
  kn::AddBiasKernel<T><<<blocks, 256, 0, stream>>>(out, bias, rows, cols);
  return LaunchStatus("AddBiasKernel");
}

}  // namespace

Gemm::~Gemm() {
  for (auto& [key, plan] : plans_) {
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
    if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c) cublasLtMatrixLayoutDestroy(plan.c);
  }
}

absl::StatusOr<Gemm::Plan*> Gemm::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return &it->second;
  const auto [n, k, m, output, bias, align_x, align_w, align_out, align_bias] = key;
  Plan plan;
  const cudaDataType_t out_type = output == static_cast<int>(GemmOutput::kF32) ? CUDA_R_32F : CUDA_R_16BF;
  // Column-major view: D[m x n] = W^T-op(A = w as [k x m], ld k) x B (x as [k x n], ld k); D = out as [m x n], ld m.
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LIVEKV_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    LIVEKV_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  }
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, k, m, k));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, k, n, k));
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.c, out_type, m, n, m));

  cublasLtMatmulPreference_t pref = nullptr;
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = blas_->workspace_bytes();
  const uint32_t aa = align_w, ab = align_x, ac = align_out;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac));
  (void)align_bias;
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(blas_->lt(), plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan.algo = result.algo;
    plan.usable = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    LIVEKV_RETURN_IF_ERROR(CublasStatus(st, "cublasLtMatmulAlgoGetHeuristic"));
  }
  auto [pos, inserted] = plans_.emplace(key, plan);
  return &pos->second;
}

absl::Status Gemm::Fallback(const LinearArgs& a, cudaStream_t stream) {
  ++fallback_calls_;
  LIVEKV_ASSIGN_OR_RETURN(cublasHandle_t h, blas_->blas(stream));
  const float alpha = 1.0f, beta = 0.0f;
  const bool f32 = a.output == GemmOutput::kF32;
  LIVEKV_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.m), static_cast<int>(a.n),
                                             static_cast<int>(a.k), &alpha, a.w, CUDA_R_16BF, static_cast<int>(a.k), a.x,
                                             CUDA_R_16BF, static_cast<int>(a.k), &beta, a.out,
                                             f32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(a.m), CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
  if (a.bias == nullptr) return absl::OkStatus();
  if (f32) return LaunchAddBias(static_cast<float*>(a.out), a.bias, a.n, a.m, stream);
  return LaunchAddBias(static_cast<__nv_bfloat16*>(a.out), a.bias, a.n, a.m, stream);
}

namespace {

template <int kRows, int kUnroll, bool kF32, bool kRope = false>
absl::Status LaunchGemvT(const kernels::GemvParams& p, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(p.k) * 2;
  const unsigned grid = static_cast<unsigned>((p.m + (kernels::kGemvThreads / 32) * kRows - 1) /
                                              ((kernels::kGemvThreads / 32) * kRows));
  static const cudaError_t attr = cudaFuncSetAttribute(kernels::GemvKernel<kRows, kUnroll, kF32, kRope>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  LIVEKV_RETURN_IF_ERROR(CudaStatus(attr, "cudaFuncSetAttribute(GemvKernel)"));
  return LaunchKernel("GemvKernel", kernels::GemvKernel<kRows, kUnroll, kF32, kRope>, dim3(grid),
                      dim3(kernels::kGemvThreads), smem, stream, p);
}

template <int kRows, int kUnroll>
absl::Status LaunchGemv(const kernels::GemvParams& p, bool f32, cudaStream_t stream) {
  return f32 ? LaunchGemvT<kRows, kUnroll, true>(p, stream) : LaunchGemvT<kRows, kUnroll, false>(p, stream);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

absl::Status LaunchGemvFor(const kernels::GemvParams& p, bool f32, cudaStream_t stream) {
  const int64_t m = p.m;
  // Enough CTAs to cover the SMs (132 on an H100) a few times over: fewer rows per warp for small m.
  const int64_t sms = 132;
  if (m >= 8 * 4 * 2 * sms) return LaunchGemv<4, 2>(p, f32, stream);
  if (m >= 8 * 2 * 2 * sms) return LaunchGemv<2, 4>(p, f32, stream);
  return LaunchGemv<1, 4>(p, f32, stream);
}

}  // namespace

bool Gemm::UsesGemv(const LinearArgs& a) const {
  return a.n == 1 && use_gemv_ && a.k > 0 && a.m > 0 && a.k % 8 == 0 && a.k <= 32768 && a.m <= INT32_MAX &&
         a.x != nullptr && a.w != nullptr && Aligned16(a.x) && Aligned16(a.w);
}

absl::Status Gemm::FusedGemv(const LinearArgs& a, const GemvFusion& f, cudaStream_t stream) {
  if (!UsesGemv(a)) {
    return absl::InvalidArgumentError(absl::StrCat("fused gemv: the product (n ", a.n, ", k ", a.k, ", m ", a.m,
                                                   ") does not run the GEMV kernel"));
  }
  const bool f32 = a.output == GemmOutput::kF32;
  if (f.residual != nullptr && f32) return absl::InvalidArgumentError("fused gemv: a residual needs a bf16 output");
  if (a.out == nullptr && f.residual == nullptr) return absl::InvalidArgumentError("fused gemv: no output");
  if (f.rope_head_dim != 0) {
    const int64_t d = f.rope_head_dim;
    if (d < 2 || d % 2 != 0 || f.rope_q_heads <= 0 || f.rope_kv_heads <= 0 ||
        a.m != (static_cast<int64_t>(f.rope_q_heads) + 2 * f.rope_kv_heads) * d) {
      return absl::InvalidArgumentError(absl::StrCat("fused gemv: RoPE epilogue for ", f.rope_q_heads, "/",
                                                     f.rope_kv_heads, " heads of ", d, " does not match m ", a.m));
    }
    if (f32 || f.residual != nullptr || f.inv_freq == nullptr || f.q == nullptr || f.k == nullptr || f.v == nullptr) {
      return absl::InvalidArgumentError("fused gemv: RoPE epilogue needs bf16 output, no residual, inv_freq, q, k, v");
    }
  }
  if ((f.x_out != nullptr && !Aligned16(f.x_out)) ||
      (f.prologue == GemvFusion::Prologue::kRmsNorm && (f.norm_weight == nullptr || !Aligned16(f.norm_weight)))) {
    return absl::InvalidArgumentError("fused gemv: x_out and the norm weight must be 16-byte aligned");
  }
  ++gemv_calls_;
  kernels::GemvParams p{a.w, a.x, a.bias, a.out, static_cast<int32_t>(a.m), static_cast<int32_t>(a.k)};
  p.prologue = f.prologue == GemvFusion::Prologue::kRmsNorm  ? kernels::kGemvRmsNorm
               : f.prologue == GemvFusion::Prologue::kSwiGlu ? kernels::kGemvSwiGlu
                                                             : kernels::kGemvPlain;
  p.norm_weight = f.norm_weight;
  p.eps = f.eps;
  p.x_out = f.x_out;
  p.residual = f.residual;
  if (f.rope_head_dim != 0) {
    p.rope_d = f.rope_head_dim;
    p.rope_hq = f.rope_q_heads;
    p.rope_rows = (f.rope_q_heads + f.rope_kv_heads) * f.rope_head_dim;
    p.inv_freq = f.inv_freq;
    p.rope_pos = f.rope_pos;
    p.q = f.q;
    p.k_out = f.k;
    p.v_out = f.v;
    // Pairs of rows. Each lane sums its chunks in ascending order whatever kRows and kUnroll, so y is the plain
    // kernel's, bit for bit.
    return LaunchGemvT<2, 4, false, true>(p, stream);
  }
  return LaunchGemvFor(p, f32, stream);
}

absl::Status Gemm::Gemv(const LinearArgs& a, cudaStream_t stream) {
  kernels::GemvParams p{a.w, a.x, a.bias, a.out, static_cast<int32_t>(a.m), static_cast<int32_t>(a.k)};
  return LaunchGemvFor(p, a.output == GemmOutput::kF32, stream);
}

absl::Status Gemm::Linear(const LinearArgs& a, cudaStream_t stream) {
  if (a.n < 0 || a.k <= 0 || a.m <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear: need n >= 0, k > 0, m > 0; saw n ", a.n, ", k ", a.k, ", m ", a.m));
  }
  if (a.n == 0) return absl::OkStatus();
  if (a.x == nullptr || a.w == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("linear: null x, w or out");
  }
  if (a.n > INT32_MAX || a.k > INT32_MAX || a.m > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("linear: dimensions past int32: n ", a.n, ", k ", a.k, ", m ", a.m));
  }
  // One token (a decode step): the bandwidth-bound GEMV kernel, when the operands allow 16-byte loads and x fits in
  // shared memory.
  if (a.n == 1 && use_gemv_ && a.k % 8 == 0 && a.k <= 32768 && Aligned16(a.x) && Aligned16(a.w)) {
    ++gemv_calls_;
    return Gemv(a, stream);
  }
  // The bias epilogue is used for bf16 outputs only (its data type follows D's); fp32 logits get the kernel.
  const bool epilogue_bias = a.bias != nullptr && a.output == GemmOutput::kBf16;
  const Key key{a.n, a.k, a.m, static_cast<int>(a.output), epilogue_bias, AlignmentOf(a.x), AlignmentOf(a.w),
                AlignmentOf(a.out), epilogue_bias ? AlignmentOf(a.bias) : 0};
  LIVEKV_ASSIGN_OR_RETURN(Plan * plan, GetPlan(key));
  if (!plan->usable) return Fallback(a, stream);
  if (epilogue_bias) {
    LIVEKV_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &a.bias, sizeof(a.bias)));
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(blas_->lt(), plan->desc, &alpha, a.w, plan->a, a.x, plan->b, &beta, a.out,
                                           plan->c, a.out, plan->c, &plan->algo, blas_->workspace(),
                                           blas_->workspace_bytes(), stream);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->usable = false;  // the heuristic's choice does not run on these operands: use the fallback from now on
    return Fallback(a, stream);
  }
  LIVEKV_RETURN_IF_ERROR(CublasStatus(st, "cublasLtMatmul"));
  if (a.bias != nullptr && !epilogue_bias) {
    return LaunchAddBias(static_cast<float*>(a.out), a.bias, a.n, a.m, stream);
  }
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace livekv
