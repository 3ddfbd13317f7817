// File: engine/cpu/cpu_backend.h
//
// The CPU backend: fp32 activations and weights in host memory, matrix products through OpenBLAS, everything
// else on a thread pool. It is the embedded default and the oracle the CUDA kernels are tested against.
#ifndef LIVEKV_ENGINE_CPU_CPU_BACKEND_H_
#define LIVEKV_ENGINE_CPU_CPU_BACKEND_H_

#include <memory>

#include "common/thread_pool.h"
#include "engine/backend.h"

namespace livekv {

struct CpuBackendOptions {
  // Threads for OpenBLAS and for the backend's own loops. 0: all hardware threads.
  int num_threads = 0;
};

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {});

  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType weight_dtype() const override { return DType::kF32; }

  absl::StatusOr<Tensor> Allocate(DType dtype, const Shape& shape) override;
  absl::Status CopyFromHost(const void* src, DType src_dtype, TensorView dst) override;
  absl::Status CopyToHost(TensorView src, float* dst) override;
  absl::Status Copy(TensorView src, TensorView dst) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status Embed(absl::Span<const int32_t> ids, TensorView table, TensorView out) override;
  absl::Status RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) override;
  absl::Status Linear(TensorView x, TensorView w, const TensorView* bias, TensorView out) override;
  absl::Status SplitQkvRope(TensorView qkv, int64_t pos0, const RopeTable& rope, TensorView q, TensorView k,
                            TensorView v) override;
  absl::Status SwiGlu(TensorView gate_up, TensorView out) override;
  absl::Status AddInPlace(TensorView x, TensorView y) override;
  absl::Status Attention(const AttentionArgs& args) override;
  absl::Status ScatterHeadMajor(TensorView src, TensorView dst, int64_t row0) override;

  ThreadPool* pool() { return pool_.get(); }

 private:
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CPU_CPU_BACKEND_H_
