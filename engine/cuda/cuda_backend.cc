#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/ops/attention.h"
#include "cuda/ops/elementwise.h"
#include "cuda/ops/kv_layout.h"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace {

using bf16 = __nv_bfloat16;

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

absl::Status ShapeError(absl::string_view op, absl::string_view what, const Shape& seen, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " has shape ", ShapeToString(seen), ", want ", want));
}

absl::Status RequireBf16(absl::string_view op, std::initializer_list<const TensorView*> ts) {
  for (const TensorView* t : ts) {
    if (t->dtype != DType::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": the CUDA backend computes on BF16, saw ", DTypeName(t->dtype)));
    }
  }
  return absl::OkStatus();
}

// Converts n host elements between float types (or copies equal types) into `dst`.
void ConvertHost(const void* src, DType st, DType dt, size_t n, void* dst) {
  if (st == dt) {
    std::memcpy(dst, src, n * DTypeSize(st));
    return;
  }
  std::vector<float> tmp;
  const float* f = static_cast<const float*>(src);
  if (st != DType::kF32) {
    tmp.resize(n);
    ConvertToF32(src, st, n, tmp.data());
    f = tmp.data();
  }
  if (dt == DType::kF32) {
    std::memcpy(dst, f, n * 4);
  } else {
    ConvertFromF32(f, n, dt, dst);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  if (cuda::DeviceCount() <= options.device || options.device < 0) {
    return absl::UnavailableError(absl::StrCat("cuda backend: no CUDA device ", options.device, " (",
                                               cuda::DeviceCount(), " found)"));
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  std::unique_ptr<CudaBackend> b(new CudaBackend(options));
  LIVEKV_ASSIGN_OR_RETURN(b->info_, cuda::GetDeviceInfo(options.device));
  LIVEKV_ASSIGN_OR_RETURN(b->stream_, cuda::Stream::Create());
  LIVEKV_ASSIGN_OR_RETURN(b->blas_, cuda::BlasHandle::Create(options.blas_workspace_bytes));
  b->gemm_ = std::make_unique<cuda::Gemm>(&b->blas_);
  LIVEKV_ASSIGN_OR_RETURN(b->ring_, UploadRing::Create(options.upload_ring_bytes, 8));
  return b;
}

CudaBackend::~CudaBackend() {
  (void)Flush();
  (void)stream_.Synchronize();
}

cudaStream_t CudaBackend::stream() const {
  LaunchPending();  // an error stays in deferred_error_ for the next operation
  return stream_.get();
}

void CudaBackend::set_fuse_decode_ops(bool on) {
  (void)Flush();
  options_.fuse_decode_ops = on;
}

void CudaBackend::LaunchPending() const {
  if (pending_.kind != PendingKind::kNone) {
    const Pending op = pending_;
    pending_ = Pending();
    cuda::ScopedPdl pdl(options_.programmatic_launch);
    absl::Status st;
    const cudaStream_t s = stream_.get();
    switch (op.kind) {
      case PendingKind::kNorm:
        st = cuda::RmsNorm(op.x, op.weight, 1, op.k, op.eps, op.out, s);
        break;
      case PendingKind::kSwiGlu:
        st = cuda::SwiGlu(op.x, 1, op.k, op.out, s);
        break;
      case PendingKind::kLinear:
        if (op.fusion.prologue != cuda::GemvFusion::Prologue::kNone || op.fusion.residual != nullptr ||
            op.fusion.rope_head_dim != 0) {
          ++fused_gemv_calls_;
        }
        st = gemm_->FusedGemv(op.linear, op.fusion, s);
        break;
      case PendingKind::kNone:
        break;
    }
    if (!st.ok() && deferred_error_.ok()) deferred_error_ = st;
  }
}

absl::Status CudaBackend::Flush() const {
  LaunchPending();
  absl::Status err = deferred_error_;
  deferred_error_ = absl::OkStatus();
  return err;
}

cuda::KvPlanOptions CudaBackend::decode_plan_options(int32_t head_dim, int32_t group) const {
  cuda::KvPlanOptions o;
  int per_sm = options_.decode_items_per_sm;
  if (per_sm <= 0) {
    const int64_t key = (static_cast<int64_t>(head_dim) << 32) | group;
    auto it = std::find_if(ctas_per_sm_.begin(), ctas_per_sm_.end(), [&](const auto& e) { return e.first == key; });
    if (it == ctas_per_sm_.end()) {
      ctas_per_sm_.push_back(
          {key, std::max(1, cuda::DecodeCtasPerSm(head_dim, group, options_.decode_stages, options_.decode_kernel))});
      it = ctas_per_sm_.end() - 1;
    }
    per_sm = it->second;
  }
  o.target_items = std::max(1, per_sm * info_.multiprocessors);
  o.min_tokens_per_item = options_.decode_min_tokens_per_item;
  return o;
}

void CudaBackend::set_decode_kernel(cuda::DecodeKernel kernel, int stages) {
  options_.decode_kernel = kernel;
  options_.decode_stages = stages;
  ctas_per_sm_.clear();
}

absl::StatusOr<Tensor> CudaBackend::Allocate(DType dtype, const Shape& shape) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("allocate: negative dimension in ", ShapeToString(shape)));
  }
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  const size_t bytes = std::max<size_t>(v.nbytes(), 256);
  LIVEKV_ASSIGN_OR_RETURN(v.data, allocator_.Allocate(bytes));
  // Work held back for fusion may still read or write this memory: launch it before the memory goes.
  return Tensor(v, [this, bytes](void* p) {
    LaunchPending();
    allocator_.Free(p, bytes);
  });
}

absl::Status CudaBackend::CopyFromHost(const void* src, DType src_dtype, TensorView dst) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  if (src_dtype != dst.dtype && !(IsFloat(src_dtype) && IsFloat(dst.dtype))) {
    return absl::InvalidArgumentError(absl::StrCat("copy from host: cannot convert ", DTypeName(src_dtype), " to ",
                                                   DTypeName(dst.dtype)));
  }
  const size_t n = static_cast<size_t>(dst.numel());
  if (n == 0) return absl::OkStatus();
  const void* from = src;
  if (src_dtype != dst.dtype) {
    host_scratch_.resize(dst.nbytes());
    ConvertHost(src, src_dtype, dst.dtype, n, host_scratch_.data());
    from = host_scratch_.data();
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.data, from, dst.nbytes(), cudaMemcpyHostToDevice, stream_.get()));
  return stream_.Synchronize();  // the source (caller's or scratch) must outlive the copy
}

absl::Status CudaBackend::CopyToHost(TensorView src, float* dst) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  if (!IsFloat(src.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("copy to host: ", DTypeName(src.dtype), " is not a float type"));
  }
  const size_t n = static_cast<size_t>(src.numel());
  if (src.dtype == DType::kF32) {
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src.data, n * 4, cudaMemcpyDeviceToHost, stream_.get()));
    return stream_.Synchronize();
  }
  host_scratch_.resize(src.nbytes());
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_scratch_.data(), src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_.get()));
  LIVEKV_RETURN_IF_ERROR(stream_.Synchronize());
  ConvertToF32(host_scratch_.data(), src.dtype, n, dst);
  return absl::OkStatus();
}

absl::Status CudaBackend::Copy(TensorView src, TensorView dst) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  if (src.dtype != dst.dtype || src.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("copy: ", DTypeName(src.dtype), ShapeToString(src.shape), " to ",
                                                   DTypeName(dst.dtype), ShapeToString(dst.shape)));
  }
  if (src.nbytes() == 0) return absl::OkStatus();
  return cuda::CudaStatus(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_.get()),
                          "copy");
}

absl::Status CudaBackend::Synchronize() {
  LIVEKV_RETURN_IF_ERROR(Flush());
  return stream_.Synchronize();
}

absl::Status CudaBackend::Embed(absl::Span<const int32_t> ids, TensorView table, TensorView out) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  LIVEKV_RETURN_IF_ERROR(RequireBf16("embed", {&table, &out}));
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
  }
  if (ids.empty()) return absl::OkStatus();
  LIVEKV_ASSIGN_OR_RETURN(void* dev_ids, ring_->Upload(ids.data(), ids.size() * sizeof(int32_t), stream_.get()));
  return cuda::EmbeddingGather(static_cast<const int32_t*>(dev_ids), static_cast<int64_t>(ids.size()),
                               table.as<bf16>(), vocab, hidden, out.as<bf16>(), stream_.get());
}

absl::Status CudaBackend::RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) {
  LIVEKV_RETURN_IF_ERROR(RequireBf16("rms_norm", {&x, &weight, &out}));
  if (x.rank() != 2 || out.shape != x.shape || weight.shape != Shape{x.dim(1)}) {
    return ShapeError("rms_norm", "x/weight/out", x.shape, "x [n, hidden], weight [hidden], out like x");
  }
  LIVEKV_RETURN_IF_ERROR(Flush());
  if (options_.fuse_decode_ops && x.dim(0) == 1 && x.data != out.data && x.dim(1) % 8 == 0) {
    // Held back: the GEMV that reads `out` next computes it in its prologue.
    pending_.kind = PendingKind::kNorm;
    pending_.x = x.as<bf16>();
    pending_.weight = weight.as<bf16>();
    pending_.eps = eps;
    pending_.out = out.as<bf16>();
    pending_.k = x.dim(1);
    return absl::OkStatus();
  }
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  return cuda::RmsNorm(x.as<bf16>(), weight.as<bf16>(), x.dim(0), x.dim(1), eps, out.as<bf16>(), stream_.get());
}

absl::Status CudaBackend::Linear(TensorView x, TensorView w, const TensorView* bias, TensorView out) {
  LIVEKV_RETURN_IF_ERROR(RequireBf16("linear", {&x, &w}));
  if (x.rank() != 2 || w.rank() != 2 || x.dim(1) != w.dim(1)) {
    return ShapeError("linear", "x/w", x.shape, absl::StrCat("x [n, in] with w [out, in], w is ", ShapeToString(w.shape)));
  }
  const int64_t n = x.dim(0), in = x.dim(1), m = w.dim(0);
  if (out.shape != Shape{n, m}) return ShapeError("linear", "out", out.shape, absl::StrCat("[", n, ", ", m, "]"));
  if (out.dtype != DType::kBF16 && out.dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("linear: output must be BF16 or F32, saw ", DTypeName(out.dtype)));
  }
  if (bias != nullptr) {
    LIVEKV_RETURN_IF_ERROR(RequireBf16("linear bias", {bias}));
    if (bias->shape != Shape{m}) return ShapeError("linear", "bias", bias->shape, absl::StrCat("[", m, "]"));
  }
  if (n == 0) return Flush();
  cuda::LinearArgs a;
  a.x = x.as<bf16>();
  a.n = n;
  a.k = in;
  a.w = w.as<bf16>();
  a.m = m;
  a.bias = bias != nullptr ? bias->as<bf16>() : nullptr;
  a.out = out.data;
  a.output = out.dtype == DType::kF32 ? cuda::GemmOutput::kF32 : cuda::GemmOutput::kBf16;
  if (options_.fuse_decode_ops && gemm_->UsesGemv(a)) {
    // Take over a pending norm / SwiGLU whose output is this product's input (it becomes the prologue), then hold
    // the product back for a residual add of its output.
    cuda::GemvFusion f;
    cuda::LinearArgs fa = a;
    const Pending& pd = pending_;
    const bool reads_pending = pd.out == a.x && pd.k == in;
    const bool clobbers = a.out == static_cast<const void*>(pd.x) || a.out == static_cast<void*>(pd.out);
    if (reads_pending && !clobbers && pd.kind == PendingKind::kNorm) {
      f.prologue = cuda::GemvFusion::Prologue::kRmsNorm;
      f.norm_weight = pd.weight;
      f.eps = pd.eps;
      f.x_out = pd.out;
      fa.x = pd.x;
    } else if (reads_pending && !clobbers && pd.kind == PendingKind::kSwiGlu) {
      f.prologue = cuda::GemvFusion::Prologue::kSwiGlu;
      f.x_out = pd.out;
      fa.x = pd.x;
    }
    if (f.prologue != cuda::GemvFusion::Prologue::kNone && gemm_->UsesGemv(fa)) {
      pending_ = Pending();
    } else {
      f = cuda::GemvFusion();
      fa = a;
      LIVEKV_RETURN_IF_ERROR(Flush());
    }
    pending_.kind = PendingKind::kLinear;
    pending_.linear = fa;
    pending_.fusion = f;
    return absl::OkStatus();
  }
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  return gemm_->Linear(a, stream_.get());
}

absl::StatusOr<const float*> CudaBackend::InvFreq(const RopeTable& rope) {
  if (rope.inv_freq != inv_freq_host_) {
    const size_t bytes = std::max<size_t>(rope.inv_freq.size() * 4, 4);
    if (inv_freq_.bytes() < bytes) {
      LIVEKV_RETURN_IF_ERROR(stream_.Synchronize());
      inv_freq_.Reset();
      LIVEKV_ASSIGN_OR_RETURN(inv_freq_, cuda::DeviceBuffer::Create(bytes));
    }
    LIVEKV_RETURN_IF_ERROR(stream_.Synchronize());  // earlier kernels may still read the old table
    // In stream order: a pageable cudaMemcpy may return before its DMA lands, and this (non-blocking) stream would
    // not wait for it.
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(inv_freq_.data(), rope.inv_freq.data(), rope.inv_freq.size() * 4,
                                                cudaMemcpyHostToDevice, stream_.get()));
    inv_freq_host_ = rope.inv_freq;
  }
  return inv_freq_.as<float>();
}

absl::Status CudaBackend::SplitQkvRope(TensorView qkv, int64_t pos0, const RopeTable& rope, TensorView q, TensorView k,
                                       TensorView v) {
  LIVEKV_RETURN_IF_ERROR(RequireBf16("split_qkv_rope", {&qkv, &q, &k, &v}));
  if (q.rank() != 3 || k.rank() != 3 || v.shape != k.shape || qkv.rank() != 2 || q.dim(0) != qkv.dim(0) ||
      k.dim(0) != qkv.dim(0) || q.dim(2) != k.dim(2) || q.dim(2) != rope.head_dim ||
      qkv.dim(1) != (q.dim(1) + 2 * k.dim(1)) * q.dim(2)) {
    return ShapeError("split_qkv_rope", "qkv", qkv.shape,
                      absl::StrCat("[n, (Hq + 2 Hkv) * D] matching q ", ShapeToString(q.shape), " and k ",
                                   ShapeToString(k.shape), ", D = rope head_dim ", rope.head_dim));
  }
  LIVEKV_ASSIGN_OR_RETURN(const float* inv_freq, InvFreq(rope));
  const Pending& pd = pending_;
  const auto overlaps = [&](const void* p) {
    return p == static_cast<const void*>(pd.linear.x) || p == pd.linear.out || p == pd.fusion.x_out;
  };
  if (pd.kind == PendingKind::kLinear && qkv.dim(0) == 1 && pd.linear.out == qkv.data &&
      pd.linear.output == cuda::GemmOutput::kBf16 && pd.linear.m == qkv.dim(1) && pd.fusion.residual == nullptr &&
      !overlaps(q.data) && !overlaps(k.data) && !overlaps(v.data) && q.data != k.data && q.data != v.data &&
      k.data != v.data) {
    // The pending product is this QKV projection: split and rotate in its epilogue (qkv is still written).
    cuda::GemvFusion& f = pending_.fusion;
    f.rope_head_dim = static_cast<int32_t>(q.dim(2));
    f.rope_q_heads = static_cast<int32_t>(q.dim(1));
    f.rope_kv_heads = static_cast<int32_t>(k.dim(1));
    f.inv_freq = inv_freq;
    f.rope_pos = pos0;
    f.q = q.as<bf16>();
    f.k = k.as<bf16>();
    f.v = v.as<bf16>();
    return Flush();
  }
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  return cuda::SplitQkvRope(qkv.as<bf16>(), qkv.dim(0), static_cast<int32_t>(q.dim(1)), static_cast<int32_t>(k.dim(1)),
                            static_cast<int32_t>(q.dim(2)), inv_freq, nullptr, pos0, q.as<bf16>(), k.as<bf16>(),
                            v.as<bf16>(), stream_.get());
}

absl::Status CudaBackend::SwiGlu(TensorView gate_up, TensorView out) {
  LIVEKV_RETURN_IF_ERROR(RequireBf16("swiglu", {&gate_up, &out}));
  if (gate_up.rank() != 2 || out.rank() != 2 || gate_up.dim(0) != out.dim(0) || gate_up.dim(1) != 2 * out.dim(1)) {
    return ShapeError("swiglu", "gate_up", gate_up.shape, absl::StrCat("[n, 2 * I] for out ", ShapeToString(out.shape)));
  }
  LIVEKV_RETURN_IF_ERROR(Flush());
  const int64_t inter = out.dim(1);
  if (options_.fuse_decode_ops && out.dim(0) == 1 && inter % 8 == 0 && gate_up.data != out.data) {
    // Held back: the GEMV that reads `out` next computes it in its prologue.
    pending_.kind = PendingKind::kSwiGlu;
    pending_.x = gate_up.as<bf16>();
    pending_.out = out.as<bf16>();
    pending_.k = inter;
    return absl::OkStatus();
  }
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  return cuda::SwiGlu(gate_up.as<bf16>(), out.dim(0), inter, out.as<bf16>(), stream_.get());
}

absl::Status CudaBackend::AddInPlace(TensorView x, TensorView y) {
  LIVEKV_RETURN_IF_ERROR(RequireBf16("add", {&x, &y}));
  if (x.shape != y.shape) return ShapeError("add", "y", y.shape, ShapeToString(x.shape));
  const Pending& pd = pending_;
  if (pd.kind == PendingKind::kLinear && pd.linear.output == cuda::GemmOutput::kBf16 && pd.linear.out == y.data &&
      pd.linear.m == y.numel() && x.data != y.data && x.data != static_cast<const void*>(pd.linear.x) &&
      x.data != static_cast<void*>(pd.fusion.x_out)) {
    // The pending product's output is the addend: add it in the GEMV's epilogue.
    pending_.fusion.residual = x.as<bf16>();
    return Flush();
  }
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  return cuda::AddInPlace(x.as<bf16>(), y.as<bf16>(), x.numel(), stream_.get());
}

absl::Status CudaBackend::EnsureDecodeWorkspace(size_t bytes) {
  if (decode_ws_.bytes() >= bytes) return absl::OkStatus();
  LIVEKV_RETURN_IF_ERROR(stream_.Synchronize());  // the old workspace may be in use
  decode_ws_.Reset();
  LIVEKV_ASSIGN_OR_RETURN(decode_ws_, cuda::DeviceBuffer::Create(std::max<size_t>(bytes * 2, size_t{1} << 20)));
  return cuda::InitDecodeWorkspace(decode_ws_.data(), decode_ws_.bytes(), stream_.get());
}

absl::Status CudaBackend::Attention(const AttentionArgs& args) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  LIVEKV_RETURN_IF_ERROR(RequireBf16("attention", {&args.q, &args.k, &args.v, &args.out}));
  if (args.q.rank() != 3 || args.k.rank() != 3 || args.v.shape != args.k.shape || args.out.shape != args.q.shape ||
      args.k.dim(0) != args.q.dim(0) || args.k.dim(2) != args.q.dim(2)) {
    return ShapeError("attention", "q/k/v/out", args.q.shape, "q, out [n, Hq, D]; k, v [n, Hkv, D]");
  }
  const int32_t n = static_cast<int32_t>(args.q.dim(0)), hq = static_cast<int32_t>(args.q.dim(1)),
                hkv = static_cast<int32_t>(args.k.dim(1)), d = static_cast<int32_t>(args.q.dim(2));
  if (n == 0) return absl::OkStatus();
  if (hkv <= 0 || hq % hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", hq, " query heads for ", hkv, " KV heads"));
  }
  if (args.context != nullptr && !args.context->heads.empty() &&
      static_cast<int32_t>(args.context->heads.size()) != hkv) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: the context has ", args.context->heads.size(), " KV heads, expected ", hkv));
  }
  const bool window = args.sliding_window > 0;
  const std::vector<int64_t> qpos = {args.pos0 + n - 1};
  if (args.context != nullptr && args.context->query_copy != nullptr && n != 1) {
    return absl::InvalidArgumentError(absl::StrCat("attention: a query copy is for one-row decode, saw ", n, " rows"));
  }
  if (n == 1) {
    // Decode: the context plus the token's own row, one split-KV launch.
    with_self_.dtype = DType::kBF16;
    with_self_.heads.resize(hkv);
    const size_t row = static_cast<size_t>(d);
    for (int32_t h = 0; h < hkv; ++h) {
      std::vector<KvRun>& runs = with_self_.heads[h];
      runs.clear();
      if (args.context != nullptr && !args.context->heads.empty()) {
        runs.insert(runs.end(), args.context->heads[h].begin(), args.context->heads[h].end());
      }
      runs.push_back(KvRun{args.k.as<bf16>() + h * row, args.v.as<bf16>() + h * row, 1, args.pos0});
    }
    if (args.context != nullptr && !args.context->heads.empty() && args.context->dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: the CUDA backend reads BF16 KV, the context holds ", DTypeName(args.context->dtype)));
    }
    const ContextKv* ctxs[] = {&with_self_};
    LIVEKV_ASSIGN_OR_RETURN(cuda::KvPlan plan,
                            cuda::KvPlan::Create(ctxs, hkv, d, decode_plan_options(d, hq / hkv),
                                                 window ? absl::MakeConstSpan(qpos) : absl::Span<const int64_t>()));
    const void* plan_dev = nullptr;
    const void* bytes = plan.bytes().data();
    const size_t size = plan.bytes().size();
    switch (options_.decode_plans) {
      case DecodePlans::kInStream: {
        LIVEKV_ASSIGN_OR_RETURN(plan_dev, ring_->Upload(bytes, size, stream_.get()));
        break;
      }
      case DecodePlans::kZeroCopy: {
        LIVEKV_ASSIGN_OR_RETURN(plan_dev, ring_->Stage(bytes, size, stream_.get()));
        break;
      }
      case DecodePlans::kAside: {
        LIVEKV_ASSIGN_OR_RETURN(plan_dev, ring_->UploadAside(bytes, size, stream_.get()));
        break;
      }
    }
    LIVEKV_RETURN_IF_ERROR(EnsureDecodeWorkspace(cuda::DecodeWorkspaceBytes(plan.num_items(), hq / hkv, d)));
    cuda::DecodeAttentionArgs a;
    a.q = args.q.as<bf16>();
    a.out = args.out.as<bf16>();
    a.num_seqs = 1;
    a.num_q_heads = hq;
    a.num_kv_heads = hkv;
    a.head_dim = d;
    a.scale = args.scale;
    a.sliding_window = args.sliding_window;
    a.kernel = options_.decode_kernel;
    a.pipeline_stages = options_.decode_stages;
    if (args.context != nullptr) a.q_copy = static_cast<bf16*>(args.context->query_copy);
    return cuda::DecodeAttention(a, plan, plan_dev, decode_ws_.data(), decode_ws_.bytes(), stream_.get());
  }
  // Prefill: the chunk over its context runs plus itself, causally.
  ContextKv empty;
  empty.dtype = DType::kBF16;
  empty.heads.resize(hkv);
  const ContextKv* ctx = args.context != nullptr && !args.context->heads.empty() ? args.context : &empty;
  const ContextKv* ctxs[] = {ctx};
  LIVEKV_ASSIGN_OR_RETURN(cuda::KvPlan plan,
                          cuda::KvPlan::Create(ctxs, hkv, d, {},
                                               window ? absl::MakeConstSpan(qpos) : absl::Span<const int64_t>()));
  LIVEKV_ASSIGN_OR_RETURN(void* plan_dev, ring_->Upload(plan.bytes().data(), plan.bytes().size(), stream_.get()));
  cuda::PrefillAttentionArgs a;
  a.q = args.q.as<bf16>();
  a.k = args.k.as<bf16>();
  a.v = args.v.as<bf16>();
  a.out = args.out.as<bf16>();
  a.n = n;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.pos0 = args.pos0;
  a.scale = args.scale;
  a.sliding_window = args.sliding_window;
  return cuda::PrefillAttention(a, plan, plan_dev, stream_.get());
}

absl::Status CudaBackend::ScatterHeadMajor(TensorView src, TensorView dst, int64_t row0) {
  LIVEKV_RETURN_IF_ERROR(Flush());
  cuda::ScopedPdl pdl(options_.programmatic_launch);
  if (src.rank() != 3 || dst.rank() != 3 || src.dim(1) != dst.dim(0) || src.dim(2) != dst.dim(2) || row0 < 0 ||
      row0 + src.dim(0) > dst.dim(1)) {
    return ShapeError("scatter_head_major", "src", src.shape,
                      absl::StrCat("[n, H, D] fitting rows [", row0, ", ", row0 + (src.rank() > 0 ? src.dim(0) : 0),
                                   ") of dst ", ShapeToString(dst.shape)));
  }
  if (src.dtype != dst.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("scatter_head_major: the CUDA backend keeps KV in its activation ",
                                                   "dtype; src ", DTypeName(src.dtype), " dst ", DTypeName(dst.dtype)));
  }
  if (src.dim(0) == 0) return absl::OkStatus();
  return cuda::TokenMajorToHeadMajor(src.data, src.dim(0), static_cast<int32_t>(src.dim(1)),
                                     src.dim(2) * static_cast<int64_t>(DTypeSize(src.dtype)), dst.data, dst.dim(1),
                                     row0, stream_.get());
}

}  // namespace livekv
