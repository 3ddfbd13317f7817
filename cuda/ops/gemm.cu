#include "cuda/ops/gemm.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/elementwise.cuh"
#include "cuda/kernels/gemv.cuh"
#include "cuda/runtime/cuda_status.h"

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

template <int kRows, int kUnroll>
absl::Status LaunchGemv(const kernels::GemvParams& p, bool f32, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(p.k) * 2;
  const unsigned grid = static_cast<unsigned>((p.m + (kernels::kGemvThreads / 32) * kRows - 1) /
                                              ((kernels::kGemvThreads / 32) * kRows));
  if (f32) {
    static const cudaError_t attr = cudaFuncSetAttribute(kernels::GemvKernel<kRows, kUnroll, true>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    LIVEKV_RETURN_IF_ERROR(CudaStatus(attr, "cudaFuncSetAttribute(GemvKernel)"));
    kernels::GemvKernel<kRows, kUnroll, true><<<grid, kernels::kGemvThreads, smem, stream>>>(p);
  } else {
    static const cudaError_t attr = cudaFuncSetAttribute(kernels::GemvKernel<kRows, kUnroll, false>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    LIVEKV_RETURN_IF_ERROR(CudaStatus(attr, "cudaFuncSetAttribute(GemvKernel)"));
    kernels::GemvKernel<kRows, kUnroll, false><<<grid, kernels::kGemvThreads, smem, stream>>>(p);
  }
  return LaunchStatus("GemvKernel");
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

absl::Status Gemm::Gemv(const LinearArgs& a, cudaStream_t stream) {
  kernels::GemvParams p{a.w, a.x, a.bias, a.out, static_cast<int32_t>(a.m), static_cast<int32_t>(a.k)};
  const bool f32 = a.output == GemmOutput::kF32;
  // Enough CTAs to cover the SMs (132 on an H100) a few times over: fewer rows per warp for small m.
  const int64_t sms = 132;
  if (a.m >= 8 * 4 * 2 * sms) return LaunchGemv<4, 2>(p, f32, stream);
  if (a.m >= 8 * 2 * 2 * sms) return LaunchGemv<2, 4>(p, f32, stream);
  return LaunchGemv<1, 4>(p, f32, stream);
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
