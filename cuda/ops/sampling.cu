#include "cuda/ops/sampling.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/sampling.cuh"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

absl::Status Check(const char* op, const float* logits, int32_t rows, int64_t stride, int32_t vocab, int32_t* out) {
  if (rows < 0 || vocab <= 0 || stride < vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": need rows >= 0, vocab > 0, stride >= vocab; saw ", rows, ", ", vocab, ", ", stride));
  }
  if (rows > 0 && (logits == nullptr || out == nullptr)) return absl::InvalidArgumentError(absl::StrCat(op, ": null pointer"));
  return absl::OkStatus();
}

}  // namespace

absl::Status SampleArgMax(const float* logits, int32_t rows, int64_t stride, int32_t vocab, int32_t* out,
                          cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(Check("sample_argmax", logits, rows, stride, vocab, out));
  if (rows == 0) return absl::OkStatus();
  kn::ArgMaxKernel<<<static_cast<unsigned>(rows), kn::kSampleThreads, 0, stream>>>(logits, stride, vocab, out);
  return LaunchStatus("ArgMaxKernel");
}

size_t SampleTopPWorkspaceBytes(int32_t rows, int32_t vocab) {
  return static_cast<size_t>(rows) * vocab * sizeof(float);
}

absl::Status SampleTopP(const float* logits, int32_t rows, int64_t stride, int32_t vocab, float temperature,
                        float top_p, const float* uniforms, int32_t* out, void* ws, size_t ws_bytes,
                        cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(Check("sample_top_p", logits, rows, stride, vocab, out));
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("sample_top_p: temperature must be >= 0, saw ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("sample_top_p: top_p must be in (0, 1], saw ", top_p));
  }
  if (temperature == 0.0f) return SampleArgMax(logits, rows, stride, vocab, out, stream);
  if (rows == 0) return absl::OkStatus();
  if (uniforms == nullptr || ws == nullptr || ws_bytes < SampleTopPWorkspaceBytes(rows, vocab)) {
    return absl::InvalidArgumentError(absl::StrCat("sample_top_p: need uniforms and a workspace of ",
                                                   SampleTopPWorkspaceBytes(rows, vocab), " bytes, saw ", ws_bytes));
  }
  kn::TopPParams p{logits, stride, vocab, 1.0f / temperature, top_p, uniforms, static_cast<float*>(ws), out};
  kn::TopPKernel<<<static_cast<unsigned>(rows), kn::kSampleThreads, 0, stream>>>(p);
  return LaunchStatus("TopPKernel");
}

}  // namespace cuda
}  // namespace livekv
