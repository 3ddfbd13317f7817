#include "cuda/ops/elementwise.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/elementwise.cuh"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

namespace k = ::livekv::cuda::kernels;

bool Vec8(int64_t elems, const void* a, const void* b = nullptr, const void* c = nullptr) {
  auto al = [](const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return elems % 8 == 0 && al(a) && al(b) && al(c);
}

absl::Status Require(bool ok, absl::string_view op, absl::string_view what) {
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

}  // namespace

absl::Status EmbeddingGather(const int32_t* ids, int64_t n, const bf16* table, int64_t vocab, int64_t hidden,
                             bf16* out, cudaStream_t stream) {
  if (n < 0 || vocab <= 0 || hidden <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding_gather: need n >= 0, vocab > 0, hidden > 0; saw n ", n, ", vocab ", vocab, ", hidden ", hidden));
  }
  if (n == 0) return absl::OkStatus();
  if (n > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("embedding_gather: n ", n, " too large"));
  LIVEKV_RETURN_IF_ERROR(Require(ids && table && out, "embedding_gather", "null pointer"));
  k::EmbedView v{ids, table, out, n, vocab, hidden};
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (hidden / 8 + 31) / 32 * 32)));
  return LaunchKernel("EmbedKernel", Vec8(hidden, table, out) ? k::EmbedKernel<true> : k::EmbedKernel<false>,
                      dim3(static_cast<unsigned>(n)), dim3(threads), 0, stream, v);
}

absl::Status RmsNorm(const bf16* x, const bf16* weight, int64_t rows, int64_t hidden, float eps, bf16* out,
                     cudaStream_t stream) {
  if (rows < 0 || hidden <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("rms_norm: need rows >= 0 and hidden > 0; saw rows ", rows, ", hidden ", hidden));
  }
  if (!(eps >= 0.0f)) return absl::InvalidArgumentError(absl::StrCat("rms_norm: eps must be >= 0, saw ", eps));
  if (rows == 0) return absl::OkStatus();
  if (rows > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("rms_norm: rows ", rows, " too large"));
  LIVEKV_RETURN_IF_ERROR(Require(x && weight && out, "rms_norm", "null pointer"));
  k::RmsNormView v{x, weight, out, rows, hidden, eps};
  const bool vec = Vec8(hidden, x, weight, out);
  const int64_t per_thread_items = vec ? hidden / 8 : hidden;
  const int threads = static_cast<int>(std::clamp<int64_t>((per_thread_items + 31) / 32 * 32, 32, 512));
  return LaunchKernel("RmsNormKernel", vec ? k::RmsNormKernel<true> : k::RmsNormKernel<false>,
                      dim3(static_cast<unsigned>(rows)), dim3(threads), 0, stream, v);
}

absl::Status SplitQkvRope(const bf16* qkv, int64_t n, int32_t hq, int32_t hkv, int32_t head_dim,
                          const float* inv_freq, const int32_t* positions, int64_t pos0, bf16* q, bf16* k, bf16* v,
                          cudaStream_t stream) {
  if (n < 0 || hq <= 0 || hkv <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("split_qkv_rope: need n >= 0, heads > 0 and an even head_dim > 0; saw n ",
                                                   n, ", hq ", hq, ", hkv ", hkv, ", head_dim ", head_dim));
  }
  if (pos0 < 0) return absl::InvalidArgumentError(absl::StrCat("split_qkv_rope: pos0 must be >= 0, saw ", pos0));
  if (n == 0) return absl::OkStatus();
  if (n > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("split_qkv_rope: n ", n, " too large"));
  LIVEKV_RETURN_IF_ERROR(Require(qkv && inv_freq && q && k && v, "split_qkv_rope", "null pointer"));
  k::QkvRopeView view{qkv, inv_freq, positions, pos0, q, k, v, n, hq, hkv, head_dim};
  const size_t smem = sizeof(float) * head_dim;
  if (smem > 48 * 1024) {
    return absl::InvalidArgumentError(absl::StrCat("split_qkv_rope: head_dim ", head_dim, " too large"));
  }
  return LaunchKernel("QkvRopeKernel", k::QkvRopeKernel, dim3(static_cast<unsigned>(n)), dim3(256), smem, stream, view);
}

absl::Status SwiGlu(const bf16* gate_up, int64_t rows, int64_t inter, bf16* out, cudaStream_t stream) {
  if (rows < 0 || inter <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("swiglu: need rows >= 0 and inter > 0; saw rows ", rows, ", inter ", inter));
  }
  if (rows == 0) return absl::OkStatus();
  if (rows > 65535) {
    // grid.y limit; callers process larger batches in slices.
    LIVEKV_RETURN_IF_ERROR(SwiGlu(gate_up, 65535, inter, out, stream));
    return SwiGlu(gate_up + 65535 * 2 * inter, rows - 65535, inter, out + 65535 * inter, stream);
  }
  LIVEKV_RETURN_IF_ERROR(Require(gate_up && out, "swiglu", "null pointer"));
  k::SwiGluView v{gate_up, out, rows, inter};
  const int threads = 256;
  // The up half starts at gate_up + inter: vectorise only when it is 16-byte aligned too.
  if (Vec8(inter, gate_up, gate_up + inter, out)) {
    dim3 grid(static_cast<unsigned>(k::CeilDiv(inter / 8, threads)), static_cast<unsigned>(rows));
    return LaunchKernel("SwiGluKernel", k::SwiGluKernel<true>, grid, dim3(threads), 0, stream, v);
  }
  dim3 grid(static_cast<unsigned>(k::CeilDiv(inter, threads)), static_cast<unsigned>(rows));
  return LaunchKernel("SwiGluKernel", k::SwiGluKernel<false>, grid, dim3(threads), 0, stream, v);
}

absl::Status AddInPlace(bf16* x, const bf16* y, int64_t n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("add: n must be >= 0, saw ", n));
  if (n == 0) return absl::OkStatus();
  LIVEKV_RETURN_IF_ERROR(Require(x && y, "add", "null pointer"));
  k::AddView v{x, y, n};
  const bool vec = Vec8(n, x, y);
  const int threads = 256;
  const int64_t items = vec ? n / 8 : n;
  const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>(k::CeilDiv(items, threads), 1, 4096));
  return LaunchKernel("AddKernel", vec ? k::AddKernel<true> : k::AddKernel<false>, dim3(blocks), dim3(threads), 0,
                      stream, v);
}

}  // namespace cuda
}  // namespace livekv
