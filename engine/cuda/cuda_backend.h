// File: engine/cuda/cuda_backend.h
//
// The CUDA backend (engine/backend.h) on one GPU and one stream: bf16 weights and activations, fp32 accumulation
// in every kernel, fp32 logits (logits_dtype) copied to the host by CopyToHost. Linear layers are cuBLASLt GEMMs
// (cuda/ops/gemm.h); norms, RoPE, SwiGLU, residual adds, embedding and the head-major KV scatter are the kernels
// of cuda/ops/elementwise.h and kv_layout.h; attention runs the split-KV decode kernel for single-token chunks and
// the flash prefill kernel otherwise, over the KV runs the KvContext selected (cuda/ops/attention.h). Memory comes
// from a CudaDeviceAllocator (RESOURCE_EXHAUSTED when the device is full), so DenseKvCache (bf16) and the
// transformer's activations live on the device.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> gpu, CudaBackend::Create());
//   LIVEKV_ASSIGN_OR_RETURN(ModelWeights w, LoadWeights(config, files, gpu.get()));   // or CudaDummyWeights
//   LIVEKV_ASSIGN_OR_RETURN(auto model, Transformer::Create(config, std::move(w), gpu.get()));
//   LIVEKV_ASSIGN_OR_RETURN(auto kv, DenseKvCache::Create(config, gpu.get(), DType::kBF16));
//
// Every operation enqueues on stream() and returns; CopyToHost and Synchronize wait. Per-step host work (attention
// plans, token ids) is staged through pinned memory (engine/cuda/upload_ring.h) so a decode step never waits for
// the device before its logits.
//
// Decode-step fusion (options.fuse_decode_ops): for one-row inputs, RmsNorm and SwiGlu are not launched at once but
// kept pending; a following Linear that reads their output runs them as the GEMV's prologue (the unfused output is
// still written), and a following AddInPlace(x, y) that adds that Linear's output becomes the GEMV's residual
// epilogue, as does a following SplitQkvRope of its output (RoPE epilogue; cuda/ops/gemm.h GemvFusion). A layer's
// 11 backend kernels become 5 (the KV context's append is its own). Anything else first launches what is pending,
// as do stream(), CopyToHost, Synchronize and freeing a tensor, so the results are observably the same as unfused
// (up to the norm's fp32 summation order). Programmatic dependent launch (options.programmatic_launch): the
// kernels of this backend's ops start while their predecessor finishes (cuda/runtime/launch.h).
//
// Thread-safety: one thread at a time (Backend's contract). The backend must outlive every tensor it allocated.
#ifndef LIVEKV_ENGINE_CUDA_CUDA_BACKEND_H_
#define LIVEKV_ENGINE_CUDA_CUDA_BACKEND_H_

#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cuda/ops/attention.h"
#include "cuda/ops/attention_plan.h"
#include "cuda/ops/gemm.h"
#include "cuda/runtime/blas_handle.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_allocator.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/stream.h"
#include "engine/backend.h"
#include "engine/cuda/upload_ring.h"
#include "engine/model_config.h"
#include "engine/weights.h"

namespace livekv {

// How a decode attention's plan (cuda/ops/attention_plan.h) reaches the kernel.
enum class DecodePlans {
  kInStream,  // copied to device memory in the compute stream, just before the kernel (UploadRing::Upload)
  kZeroCopy,  // read by the kernel from mapped pinned memory (UploadRing::Stage): no copy between two kernels
  kAside,     // copied on the ring's own stream when the host enqueues the attention; the compute stream waits for
              // it by an event (UploadRing::UploadAside)
};

struct CudaBackendOptions {
  int device = 0;
  size_t blas_workspace_bytes = size_t{32} << 20;
  // Split-KV decode: work items per SM the attention plans aim for; 0 picks the decode kernel's occupancy (the
  // CTAs one SM holds at once), so one wave covers the GPU.
  int decode_items_per_sm = 0;
  // The shortest item a slot is cut into. 128: a budget-2048 sparse slot becomes 16 items instead of 33, and the
  // kernel takes 7.5 instead of 9.0 us on an H100 (kernels_bench, PDL in a CUDA graph; the decode step does not
  // change beyond its noise, docs/gpu.md). Long dense contexts are cut into longer items anyway.
  int decode_min_tokens_per_item = 128;
  // The decode attention kernel and its shared-memory stages (0: its default); benchmarks compare them.
  cuda::DecodeKernel decode_kernel = cuda::DecodeKernel::kMma;
  int decode_stages = 0;
  size_t upload_ring_bytes = size_t{32} << 20;
  // One-row RmsNorm/SwiGlu -> GEMV prologue and GEMV -> residual add fusion (see above); benchmarks switch it off.
  bool fuse_decode_ops = true;
  // Programmatic dependent launch of this backend's kernels (Hopper); benchmarks switch it off.
  bool programmatic_launch = true;
  // Where decode attention reads its per-call plan (engine/cuda/upload_ring.h); benchmarks compare them. Aside:
  // the host enqueues a decode step ahead of the device, so the copy has landed before the compute stream reaches
  // it, and the kernel reads device memory instead of a PCIe link the recall keeps busy (H100, docs/gpu.md: the
  // sparse 32k / 128k steps 0.05-0.1 ms shorter than zero-copy, 0.2-0.35 ms shorter than copies in the stream).
  DecodePlans decode_plans = DecodePlans::kAside;
};

class CudaBackend : public Backend {
 public:
  // UNAVAILABLE without a usable device; RESOURCE_EXHAUSTED when its start-up buffers do not fit.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options = {});
  ~CudaBackend() override;

  std::string name() const override { return "cuda:" + std::to_string(options_.device); }
  DType activation_dtype() const override { return DType::kBF16; }
  DType weight_dtype() const override { return DType::kBF16; }
  DType logits_dtype() const override { return DType::kF32; }

  absl::StatusOr<Tensor> Allocate(DType dtype, const Shape& shape) override;
  absl::Status CopyFromHost(const void* src, DType src_dtype, TensorView dst) override;
  absl::Status CopyToHost(TensorView src, float* dst) override;
  absl::Status Copy(TensorView src, TensorView dst) override;
  absl::Status Synchronize() override;

  absl::Status Embed(absl::Span<const int32_t> ids, TensorView table, TensorView out) override;
  absl::Status RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) override;
  absl::Status Linear(TensorView x, TensorView w, const TensorView* bias, TensorView out) override;
  absl::Status SplitQkvRope(TensorView qkv, int64_t pos0, const RopeTable& rope, TensorView q, TensorView k,
                            TensorView v) override;
  absl::Status SwiGlu(TensorView gate_up, TensorView out) override;
  absl::Status AddInPlace(TensorView x, TensorView y) override;
  absl::Status Attention(const AttentionArgs& args) override;
  absl::Status ScatterHeadMajor(TensorView src, TensorView dst, int64_t row0) override;

  // The stream every operation runs on (KV contexts order their own streams against it with events). Launches
  // pending fused work first, so everything issued so far is on it.
  cudaStream_t stream() const;
  const cuda::DeviceInfo& device_info() const { return info_; }
  int device() const { return options_.device; }
  UploadRing* upload_ring() { return ring_.get(); }
  // The plan options decode attention uses (items per SM from the kernel's occupancy).
  cuda::KvPlanOptions decode_plan_options(int32_t head_dim, int32_t group) const;
  // Switches the decode kernel from the next call on (benchmarks).
  void set_decode_kernel(cuda::DecodeKernel kernel, int stages);
  cuda::DecodeKernel decode_kernel() const { return options_.decode_kernel; }
  int decode_stages() const { return options_.decode_stages; }
  // Switch decode-step fusion and programmatic launch from the next call on (benchmarks).
  void set_fuse_decode_ops(bool on);
  void set_programmatic_launch(bool on) { options_.programmatic_launch = on; }
  void set_decode_plans(DecodePlans plans) { options_.decode_plans = plans; }
  void set_decode_min_tokens_per_item(int tokens) { options_.decode_min_tokens_per_item = tokens; }
  int decode_min_tokens_per_item() const { return options_.decode_min_tokens_per_item; }
  DecodePlans decode_plans() const { return options_.decode_plans; }
  // GEMV launches that carried a fused prologue or residual (tests and benchmarks).
  int64_t fused_gemv_calls() const { return fused_gemv_calls_; }

 private:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options), allocator_(options.device) {}
  absl::Status EnsureDecodeWorkspace(size_t bytes);
  // Launches the pending op, if any; a failure is kept in deferred_error_ for the next operation.
  void LaunchPending() const;
  // LaunchPending(), then returns (and clears) the kept error.
  absl::Status Flush() const;

  // The op held back for fusion (decode steps): a norm or SwiGLU waiting for the GEMV that reads its output, or a
  // GEMV (with such a prologue) waiting for the residual add of its output.
  enum class PendingKind { kNone, kNorm, kSwiGlu, kLinear };
  struct Pending {
    PendingKind kind = PendingKind::kNone;
    const __nv_bfloat16* x = nullptr;  // kNorm: x [1, k]; kSwiGlu: gate_up [1, 2k]
    const __nv_bfloat16* weight = nullptr;
    float eps = 0.0f;
    __nv_bfloat16* out = nullptr;      // kNorm / kSwiGlu: their output [1, k]
    int64_t k = 0;
    cuda::LinearArgs linear;            // kLinear
    cuda::GemvFusion fusion;            // kLinear
  };
  absl::StatusOr<const float*> InvFreq(const RopeTable& rope);

  CudaBackendOptions options_;
  cuda::CudaDeviceAllocator allocator_;
  cuda::DeviceInfo info_;
  cuda::Stream stream_;
  cuda::BlasHandle blas_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unique_ptr<UploadRing> ring_;
  cuda::DeviceBuffer decode_ws_;
  cuda::DeviceBuffer inv_freq_;
  std::vector<float> inv_freq_host_;
  std::vector<uint8_t> host_scratch_;
  mutable std::vector<std::pair<int64_t, int>> ctas_per_sm_;  // (head_dim << 32 | group) -> occupancy
  ContextKv with_self_;  // reused per call: the context plus the token's own row
  mutable Pending pending_;
  mutable absl::Status deferred_error_;
  mutable int64_t fused_gemv_calls_ = 0;
};

// Deterministic pseudo-random weights generated on the device: the same values as DummyWeights (engine/weights.h)
// gives on any backend, i.e. DummyHfTensor's fp32 values rounded to bf16 (round-to-nearest-even), without
// generating billions of values on the host. Norm weights are 1.
absl::StatusOr<ModelWeights> CudaDummyWeights(const ModelConfig& config, uint64_t seed, CudaBackend* backend,
                                              float stddev = 0.02f);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CUDA_CUDA_BACKEND_H_
