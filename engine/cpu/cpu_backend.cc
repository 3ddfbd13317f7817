#include "engine/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_attention.h"

namespace livekv {
namespace {

absl::Status ShapeError(absl::string_view op, absl::string_view operand, const Shape& seen,
                        absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", operand, " has shape ", ShapeToString(seen), ", want ", want));
}

absl::Status RequireF32(absl::string_view op, std::initializer_list<const TensorView*> ts) {
  for (const TensorView* t : ts) {
    if (t->dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": CPU backend computes in F32, saw ", DTypeName(t->dtype)));
    }
  }
  return absl::OkStatus();
}

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& options) {
  const int threads =
      options.num_threads > 0 ? options.num_threads : std::max(1u, std::thread::hardware_concurrency());
  pool_ = std::make_unique<ThreadPool>(threads);
  openblas_set_num_threads(threads);
}

absl::StatusOr<Tensor> CpuBackend::Allocate(DType dtype, const Shape& shape) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("allocate: negative dimension in ", ShapeToString(shape)));
  }
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  const size_t bytes = std::max<size_t>(v.nbytes(), 64);
  // 64-byte alignment for vector loads; rounded up as aligned_alloc requires.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("allocate: out of host memory for ", bytes, " bytes"));
  }
  v.data = p;
  return Tensor(v, [](void* ptr) { std::free(ptr); });
}

absl::Status CpuBackend::CopyFromHost(const void* src, DType src_dtype, TensorView dst) {
  if (src_dtype != dst.dtype && !(IsFloat(src_dtype) && IsFloat(dst.dtype))) {
    return absl::InvalidArgumentError(absl::StrCat("copy from host: cannot convert ", DTypeName(src_dtype), " to ",
                                                   DTypeName(dst.dtype)));
  }
  ConvertFloats(src, src_dtype, dst.data, dst.dtype, dst.numel());
  return absl::OkStatus();
}

absl::Status CpuBackend::CopyToHost(TensorView src, float* dst) {
  if (!IsFloat(src.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("copy to host: ", DTypeName(src.dtype), " is not a float type"));
  }
  ConvertFloats(src.data, src.dtype, dst, DType::kF32, src.numel());
  return absl::OkStatus();
}

absl::Status CpuBackend::Copy(TensorView src, TensorView dst) {
  if (src.dtype != dst.dtype || src.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("copy: ", DTypeName(src.dtype), ShapeToString(src.shape), " to ",
                                                   DTypeName(dst.dtype), ShapeToString(dst.shape)));
  }
  std::memmove(dst.data, src.data, src.nbytes());
  return absl::OkStatus();
}

absl::Status CpuBackend::Embed(absl::Span<const int32_t> ids, TensorView table, TensorView out) {
  if (auto s = RequireF32("embed", {&table, &out}); !s.ok()) return s;
  if (table.rank() != 2) return ShapeError("embed", "table", table.shape, "[vocab, hidden]");
  const int64_t vocab = table.dim(0), hidden = table.dim(1);
  if (out.shape != Shape{static_cast<int64_t>(ids.size()), hidden}) {
    return ShapeError("embed", "out", out.shape, absl::StrCat("[", ids.size(), ", ", hidden, "]"));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("embed: token id ", ids[i], " at index ", i, " is outside the vocabulary of ", vocab));
    }
    std::memcpy(out.as<float>() + i * hidden, table.as<float>() + int64_t{ids[i]} * hidden, hidden * 4);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) {
  if (auto s = RequireF32("rms_norm", {&x, &weight, &out}); !s.ok()) return s;
  if (x.rank() != 2 || out.shape != x.shape || weight.shape != Shape{x.dim(1)}) {
    return ShapeError("rms_norm", "x/weight/out", x.shape, "x [n, hidden], weight [hidden], out like x");
  }
  const int64_t n = x.dim(0), h = x.dim(1);
  const float* w = weight.as<float>();
  pool_->ParallelFor(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const float* xr = x.as<float>() + r * h;
          float* o = out.as<float>() + r * h;
          float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
          for (int64_t i = 0; i < h; ++i) ss += xr[i] * xr[i];
          const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
          for (int64_t i = 0; i < h; ++i) o[i] = w[i] * (xr[i] * inv);
        }
      },
      /*min_grain=*/8);
  return absl::OkStatus();
}

absl::Status CpuBackend::Linear(TensorView x, TensorView w, const TensorView* bias, TensorView out) {
  if (auto s = RequireF32("linear", {&x, &w, &out}); !s.ok()) return s;
  if (x.rank() != 2 || w.rank() != 2 || x.dim(1) != w.dim(1)) {
    return ShapeError("linear", "x/w", x.shape, absl::StrCat("x [n, in] with w [out, in], w is ", ShapeToString(w.shape)));
  }
  const int64_t n = x.dim(0), in = x.dim(1), m = w.dim(0);
  if (out.shape != Shape{n, m}) return ShapeError("linear", "out", out.shape, absl::StrCat("[", n, ", ", m, "]"));
  if (bias != nullptr && (bias->dtype != DType::kF32 || bias->shape != Shape{m})) {
    return ShapeError("linear", "bias", bias->shape, absl::StrCat("[", m, "] F32"));
  }
  if (n == 0) return absl::OkStatus();
  if (n == 1) {  // a decode step: matrix-vector, bound by reading w once
    cblas_sgemv(CblasRowMajor, CblasNoTrans, m, in, 1.0f, w.as<float>(), in, x.as<float>(), 1, 0.0f,
                out.as<float>(), 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, in, 1.0f, x.as<float>(), in, w.as<float>(), in,
                0.0f, out.as<float>(), m);
  }
  if (bias != nullptr) {
    const float* b = bias->as<float>();
    for (int64_t r = 0; r < n; ++r) {
      float* o = out.as<float>() + r * m;
      for (int64_t i = 0; i < m; ++i) o[i] += b[i];
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::SplitQkvRope(TensorView qkv, int64_t pos0, const RopeTable& rope, TensorView q,
                                      TensorView k, TensorView v) {
  if (auto s = RequireF32("split_qkv_rope", {&qkv, &q, &k, &v}); !s.ok()) return s;
  if (q.rank() != 3 || k.rank() != 3 || k.shape != v.shape) {
    return ShapeError("split_qkv_rope", "q/k/v", q.shape, "q [n, Hq, D], k and v [n, Hkv, D]");
  }
  const int64_t n = q.dim(0), hq = q.dim(1), d = q.dim(2), hkv = k.dim(1);
  const int64_t width = (hq + 2 * hkv) * d;
  if (qkv.shape != Shape{n, width} || k.dim(0) != n || k.dim(2) != d) {
    return ShapeError("split_qkv_rope", "qkv", qkv.shape, absl::StrCat("[", n, ", ", width, "]"));
  }
  if (rope.head_dim != d) {
    return absl::InvalidArgumentError(
        absl::StrCat("split_qkv_rope: rope table is for head_dim ", rope.head_dim, ", tensors have ", d));
  }
  pool_->ParallelFor(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* src = qkv.as<float>() + r * width;
      float* qr = q.as<float>() + r * hq * d;
      float* kr = k.as<float>() + r * hkv * d;
      float* vr = v.as<float>() + r * hkv * d;
      std::memcpy(qr, src, hq * d * 4);
      std::memcpy(kr, src + hq * d, hkv * d * 4);
      std::memcpy(vr, src + (hq + hkv) * d, hkv * d * 4);
      for (int64_t h = 0; h < hq; ++h) ApplyRope(rope, pos0 + r, qr + h * d);
      for (int64_t h = 0; h < hkv; ++h) ApplyRope(rope, pos0 + r, kr + h * d);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::SwiGlu(TensorView gate_up, TensorView out) {
  if (auto s = RequireF32("swiglu", {&gate_up, &out}); !s.ok()) return s;
  if (gate_up.rank() != 2 || out.rank() != 2 || gate_up.dim(0) != out.dim(0) || gate_up.dim(1) != 2 * out.dim(1)) {
    return ShapeError("swiglu", "gate_up", gate_up.shape, absl::StrCat("[n, 2 * ", out.rank() == 2 ? out.dim(1) : -1, "]"));
  }
  const int64_t n = out.dim(0), inter = out.dim(1);
  pool_->ParallelFor(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = gate_up.as<float>() + r * 2 * inter;
      const float* u = g + inter;
      float* o = out.as<float>() + r * inter;
      for (int64_t i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::AddInPlace(TensorView x, TensorView y) {
  if (auto s = RequireF32("add", {&x, &y}); !s.ok()) return s;
  if (x.shape != y.shape) return ShapeError("add", "y", y.shape, ShapeToString(x.shape));
  float* a = x.as<float>();
  const float* b = y.as<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(const AttentionArgs& args) { return CpuAttention(args, pool_.get()); }

absl::Status CpuBackend::ScatterHeadMajor(TensorView src, TensorView dst, int64_t row0) {
  if (!IsFloat(src.dtype) || !IsFloat(dst.dtype)) {
    return absl::InvalidArgumentError("scatter_head_major: float tensors required");
  }
  if (src.rank() != 3 || dst.rank() != 3 || src.dim(1) != dst.dim(0) || src.dim(2) != dst.dim(2)) {
    return ShapeError("scatter_head_major", "src/dst", src.shape,
                      absl::StrCat("src [n, H, D] into dst [H, capacity, D], dst is ", ShapeToString(dst.shape)));
  }
  const int64_t n = src.dim(0), heads = src.dim(1), d = src.dim(2), cap = dst.dim(1);
  if (row0 < 0 || row0 + n > cap) {
    return absl::InvalidArgumentError(
        absl::StrCat("scatter_head_major: rows [", row0, ", ", row0 + n, ") exceed capacity ", cap));
  }
  const size_t se = DTypeSize(src.dtype), de = DTypeSize(dst.dtype);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      ConvertFloats(static_cast<const char*>(src.data) + ((r * heads + h) * d) * se, src.dtype,
                      static_cast<char*>(dst.data) + ((h * cap + row0 + r) * d) * de, dst.dtype, d);
    }
  }
  return absl::OkStatus();
}

}  // namespace livekv
