#include "cuda/ops/attention.h"

#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "cuda/kernels/attention_decode.cuh"
#include "cuda/kernels/attention_prefill.cuh"
#include "cuda/runtime/cuda_status.h"
#include "cuda/runtime/device.h"
#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

namespace kn = ::livekv::cuda::kernels;

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

absl::Status CheckHeads(absl::string_view op, int32_t hq, int32_t hkv, int32_t d) {
  if (hq <= 0 || hkv <= 0 || hq % hkv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": query heads ", hq, " must be a positive multiple of KV heads ", hkv));
  }
  if (d != 32 && d != 64 && d != 128 && d != 256) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": head_dim ", d, " is not supported (32, 64, 128, 256)"));
  }
  return absl::OkStatus();
}

template <int kD, int kG>
absl::Status LaunchDecode(const kn::DecodeParams& p, int32_t num_items, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>(num_items), static_cast<unsigned>((p.group + kG - 1) / kG));
  kn::DecodeKernel<kD, kG><<<grid, 32 * kn::kDecodeWarps, 0, stream>>>(p);
  return LaunchStatus("DecodeKernel");
}

template <int kD>
absl::Status LaunchDecodeD(const kn::DecodeParams& p, int32_t num_items, cudaStream_t stream) {
  if (p.group <= 1) return LaunchDecode<kD, 1>(p, num_items, stream);
  if (p.group <= 2) return LaunchDecode<kD, 2>(p, num_items, stream);
  if (p.group <= 4) return LaunchDecode<kD, 4>(p, num_items, stream);
  return LaunchDecode<kD, 8>(p, num_items, stream);  // groups > 8 take several CTAs per item (grid.y)
}

// The query heads one pipelined CTA serves: the group rounded up to 1, 2, 4 or 8 (larger groups: grid.y chunks).
int PipeGroup(int32_t group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }

template <int kD, int kG, int kSt>
absl::Status SetPipelinedSmem() {
  constexpr size_t smem = kn::PipeDynamicSharedBytes<kD, kSt>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      kn::DecodePipelinedKernel<kD, kG, kSt>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  return CudaStatus(attr, "cudaFuncSetAttribute(DecodePipelinedKernel)");
}

template <int kD, int kG, int kSt>
absl::Status LaunchPipelined(const kn::DecodeParams& p, int32_t num_items, cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR((SetPipelinedSmem<kD, kG, kSt>()));
  dim3 grid(static_cast<unsigned>(num_items), static_cast<unsigned>((p.group + kG - 1) / kG));
  kn::DecodePipelinedKernel<kD, kG, kSt><<<grid, kn::kPipeThreads, kn::PipeDynamicSharedBytes<kD, kSt>(), stream>>>(p);
  return LaunchStatus("DecodePipelinedKernel");
}

template <int kD, int kG>
absl::Status LaunchPipelinedS(const kn::DecodeParams& p, int32_t num_items, int stages, cudaStream_t stream) {
  if constexpr (kD == 128) {  // the Llama-3 head size: stage variants for tuning
    if (stages == 2) return LaunchPipelined<kD, kG, 2>(p, num_items, stream);
    if (stages == 4) return LaunchPipelined<kD, kG, 4>(p, num_items, stream);
  }
  return LaunchPipelined<kD, kG, 0>(p, num_items, stream);
}

template <int kD>
absl::Status LaunchPipelinedD(const kn::DecodeParams& p, int32_t num_items, int stages, cudaStream_t stream) {
  switch (PipeGroup(p.group)) {
    case 1: return LaunchPipelinedS<kD, 1>(p, num_items, stages, stream);
    case 2: return LaunchPipelinedS<kD, 2>(p, num_items, stages, stream);
    case 4: return LaunchPipelinedS<kD, 4>(p, num_items, stages, stream);
    default: return LaunchPipelinedS<kD, 8>(p, num_items, stages, stream);
  }
}

template <int kD, int kG, int kSt>
int PipelinedCtasPerSm() {
  if (!SetPipelinedSmem<kD, kG, kSt>().ok()) return 0;  // the occupancy query needs the raised smem limit
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kn::DecodePipelinedKernel<kD, kG, kSt>, kn::kPipeThreads,
                                                    kn::PipeDynamicSharedBytes<kD, kSt>()) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return blocks;
}

template <int kD, int kG>
int PipelinedCtasPerSmS(int stages) {
  if constexpr (kD == 128) {
    if (stages == 2) return PipelinedCtasPerSm<kD, kG, 2>();
    if (stages == 4) return PipelinedCtasPerSm<kD, kG, 4>();
  }
  return PipelinedCtasPerSm<kD, kG, 0>();
}

template <int kD, int kSt, bool kRowLoads = false>
absl::Status SetMmaSmem() {
  constexpr size_t smem = kn::MmaDynamicSharedBytes<kD, kSt>();
  static const cudaError_t attr = cudaFuncSetAttribute(kn::DecodeMmaKernel<kD, kSt, kRowLoads>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  return CudaStatus(attr, "cudaFuncSetAttribute(DecodeMmaKernel)");
}

template <int kD, int kSt, bool kRowLoads = false>
absl::Status LaunchMma(const kn::DecodeParams& p, int32_t num_items, cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR((SetMmaSmem<kD, kSt, kRowLoads>()));
  dim3 grid(static_cast<unsigned>(num_items), static_cast<unsigned>((p.group + 7) / 8));
  return LaunchKernel("DecodeMmaKernel", kn::DecodeMmaKernel<kD, kSt, kRowLoads>, grid, dim3(32 * kn::kMmaWarps),
                      kn::MmaDynamicSharedBytes<kD, kSt>(), stream, p);
}

template <int kD>
absl::Status LaunchMmaD(const kn::DecodeParams& p, int32_t num_items, int stages, cudaStream_t stream) {
  if constexpr (kD == 128) {
    if (stages == 2) return LaunchMma<kD, 2>(p, num_items, stream);
    if (stages == 4) return LaunchMma<kD, 4>(p, num_items, stream);
  }
  return LaunchMma<kD, 3>(p, num_items, stream);
}

template <int kD, int kSt>
int MmaCtasPerSm() {
  if (!SetMmaSmem<kD, kSt>().ok()) return 0;
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kn::DecodeMmaKernel<kD, kSt>, 32 * kn::kMmaWarps,
                                                    kn::MmaDynamicSharedBytes<kD, kSt>()) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return blocks;
}

template <int kD>
int MmaCtasPerSmS(int stages) {
  if constexpr (kD == 128) {
    if (stages == 2) return MmaCtasPerSm<kD, 2>();
    if (stages == 4) return MmaCtasPerSm<kD, 4>();
  }
  return MmaCtasPerSm<kD, 3>();
}

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

// Workspace layout: [counters: int32 per (item, grid.y chunk)] [partial o] [partial (m, l)].
size_t CounterBytes(int32_t num_items, int32_t group) {
  return Align256(static_cast<size_t>(num_items) * ((group + 7) / 8) * sizeof(int32_t));
}

// The wgmma prefill kernels: 128 query rows per CTA, grid (row tiles, KV heads), `smem` bytes of dynamic shared memory.
absl::Status LaunchPrefillOnWgmma(void (*kernel)(kn::PrefillParams), const char* name, size_t smem, int threads,
                                  const kn::PrefillParams& p, cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
      absl::StrCat("cudaFuncSetAttribute(", name, ")")));
  const int64_t rows = static_cast<int64_t>(p.n) * p.group;
  dim3 grid(static_cast<unsigned>(kn::CeilDiv(rows, kn::kWgPrefillRows)), static_cast<unsigned>(p.hkv));
  kernel<<<grid, threads, smem, stream>>>(p);
  return LaunchStatus(name);
}

template <int kD>
absl::Status LaunchPrefillWgmma(const kn::PrefillParams& p, cudaStream_t stream) {
  return LaunchPrefillOnWgmma(kn::PrefillWgmmaKernel<kD>, "PrefillWgmmaKernel", kn::PrefillWgmmaSharedBytes<kD>(),
                              kn::kWgPrefillThreads, p, stream);
}

template <int kD>
absl::Status LaunchPrefillWs(const kn::PrefillParams& p, cudaStream_t stream) {
  return LaunchPrefillOnWgmma(kn::PrefillWsKernel<kD>, "PrefillWsKernel", kn::PrefillWsSharedBytes<kD>(),
                              kn::kWsPrefillThreads, p, stream);
}

template <int kD>
absl::Status LaunchPrefill(const kn::PrefillParams& p, cudaStream_t stream) {
  constexpr size_t smem = kn::PrefillSharedBytes<kD>();
  LIVEKV_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(kn::PrefillKernel<kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
      "cudaFuncSetAttribute(PrefillKernel)"));
  const int64_t rows = static_cast<int64_t>(p.n) * p.group;
  dim3 grid(static_cast<unsigned>(kn::CeilDiv(rows, kn::kPrefillRows)), static_cast<unsigned>(p.hkv));
  kn::PrefillKernel<kD><<<grid, kn::kPrefillThreads, smem, stream>>>(p);
  return LaunchStatus("PrefillKernel");
}

}  // namespace

size_t DecodeWorkspaceBytes(int32_t num_items, int32_t group, int32_t head_dim) {
  return CounterBytes(num_items, group) +
         static_cast<size_t>(num_items) * group * (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

absl::Status InitDecodeWorkspace(void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (workspace == nullptr || workspace_bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemsetAsync(workspace, 0, workspace_bytes, stream), "cudaMemsetAsync(decode workspace)");
}

int DecodeCtasPerSm(int32_t head_dim, int32_t group, int stages, DecodeKernel kernel) {
  const int g = PipeGroup(group);
  auto pick = [&](auto d) -> int {
    constexpr int kD = decltype(d)::value;
    if (kernel == DecodeKernel::kMma || kernel == DecodeKernel::kMmaRowLoads) {
      return MmaCtasPerSmS<kD>(kernel == DecodeKernel::kMmaRowLoads ? 3 : stages);
    }
    if (kernel == DecodeKernel::kLegacy) return 2;
    switch (g) {
      case 1: return PipelinedCtasPerSmS<kD, 1>(stages);
      case 2: return PipelinedCtasPerSmS<kD, 2>(stages);
      case 4: return PipelinedCtasPerSmS<kD, 4>(stages);
      default: return PipelinedCtasPerSmS<kD, 8>(stages);
    }
  };
  switch (head_dim) {
    case 32: return pick(std::integral_constant<int, 32>());
    case 64: return pick(std::integral_constant<int, 64>());
    case 128: return pick(std::integral_constant<int, 128>());
    case 256: return pick(std::integral_constant<int, 256>());
    default: return 0;
  }
}

absl::Status DecodeAttention(const DecodeAttentionArgs& a, const KvPlan& plan, const void* plan_device,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(CheckHeads("decode_attention", a.num_q_heads, a.num_kv_heads, a.head_dim));
  if (a.num_seqs <= 0 || plan.num_seqs() != a.num_seqs || plan.num_kv_heads() != a.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("decode_attention: ", a.num_seqs, " sequences x ", a.num_kv_heads,
                                                   " KV heads, but the plan has ", plan.num_seqs(), " x ",
                                                   plan.num_kv_heads()));
  }
  if (a.sliding_window < 0 || (a.sliding_window > 0 && !plan.has_positions())) {
    return absl::InvalidArgumentError(absl::StrCat("decode_attention: sliding window ", a.sliding_window,
                                                   " needs a plan made with query positions"));
  }
  if (!(std::isfinite(a.scale))) return absl::InvalidArgumentError(absl::StrCat("decode_attention: scale ", a.scale));
  if (a.q == nullptr || a.out == nullptr || plan_device == nullptr || !Aligned16(a.q) || !Aligned16(plan_device)) {
    return absl::InvalidArgumentError("decode_attention: q, out and the plan must be non-null, 16-byte aligned");
  }
  const size_t q_bytes = static_cast<size_t>(a.num_seqs) * a.num_q_heads * a.head_dim * sizeof(__nv_bfloat16);
  if (a.q_copy != nullptr) {
    const auto* c = reinterpret_cast<const uint8_t*>(a.q_copy);
    const auto* q = reinterpret_cast<const uint8_t*>(a.q);
    if (!Aligned16(a.q_copy) || (c < q + q_bytes && q < c + q_bytes)) {
      return absl::InvalidArgumentError("decode_attention: q_copy must be 16-byte aligned and must not overlap q");
    }
  }
  const int32_t group = a.num_q_heads / a.num_kv_heads;
  const size_t need = DecodeWorkspaceBytes(plan.num_items(), group, a.head_dim);
  const bool split = plan.num_items() > plan.num_slots();
  if (split && (workspace == nullptr || workspace_bytes < need)) {
    return absl::InvalidArgumentError(absl::StrCat("decode_attention: workspace of ", workspace_bytes,
                                                   " bytes, the plan needs ", need));
  }
  kn::DecodeParams p;
  p.q = a.q;
  p.out = a.out;
  p.table = plan.Table(plan_device);
  p.items = plan.Items(plan_device);
  p.q_positions = plan.QueryPositions(plan_device);
  const size_t counter_bytes = CounterBytes(plan.num_items(), group);
  p.counters = split ? static_cast<int32_t*>(workspace) : nullptr;
  p.partial_o = split ? reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + counter_bytes) : nullptr;
  p.partial_ml = split ? p.partial_o + static_cast<size_t>(plan.num_items()) * group * a.head_dim : nullptr;
  p.hq = a.num_q_heads;
  p.hkv = a.num_kv_heads;
  p.group = group;
  p.scale_log2 = a.scale * kn::kLog2e;
  p.window = a.sliding_window;
  p.q_copy = a.kernel == DecodeKernel::kMma ? a.q_copy : nullptr;
  if (a.q_copy != nullptr && a.kernel != DecodeKernel::kMma) {
    LIVEKV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(a.q_copy, a.q, q_bytes, cudaMemcpyDeviceToDevice, stream),
                                      "decode_attention: q copy"));
  }
  if (a.kernel == DecodeKernel::kMmaRowLoads) {
    if (a.head_dim != 128 || (a.pipeline_stages != 0 && a.pipeline_stages != 3)) {
      return absl::InvalidArgumentError(absl::StrCat("decode_attention: the row-loads kernel exists for head_dim 128 ",
                                                     "with 3 stages; saw ", a.head_dim, ", ", a.pipeline_stages));
    }
    return LaunchMma<128, 3, true>(p, plan.num_items(), stream);
  }
  if (a.kernel == DecodeKernel::kMma) {
    switch (a.head_dim) {
      case 32: return LaunchMmaD<32>(p, plan.num_items(), a.pipeline_stages, stream);
      case 64: return LaunchMmaD<64>(p, plan.num_items(), a.pipeline_stages, stream);
      case 128: return LaunchMmaD<128>(p, plan.num_items(), a.pipeline_stages, stream);
      default: return LaunchMmaD<256>(p, plan.num_items(), a.pipeline_stages, stream);
    }
  }
  if (a.kernel == DecodeKernel::kPipelined) {
    switch (a.head_dim) {
      case 32: return LaunchPipelinedD<32>(p, plan.num_items(), a.pipeline_stages, stream);
      case 64: return LaunchPipelinedD<64>(p, plan.num_items(), a.pipeline_stages, stream);
      case 128: return LaunchPipelinedD<128>(p, plan.num_items(), a.pipeline_stages, stream);
      default: return LaunchPipelinedD<256>(p, plan.num_items(), a.pipeline_stages, stream);
    }
  }
  switch (a.head_dim) {
    case 32: LIVEKV_RETURN_IF_ERROR(LaunchDecodeD<32>(p, plan.num_items(), stream)); break;
    case 64: LIVEKV_RETURN_IF_ERROR(LaunchDecodeD<64>(p, plan.num_items(), stream)); break;
    case 128: LIVEKV_RETURN_IF_ERROR(LaunchDecodeD<128>(p, plan.num_items(), stream)); break;
    default: LIVEKV_RETURN_IF_ERROR(LaunchDecodeD<256>(p, plan.num_items(), stream)); break;
  }
  if (!split) return absl::OkStatus();
  kn::DecodeCombineParams c{p.partial_o, p.partial_ml, plan.SlotItems(plan_device), a.out, a.num_q_heads,
                            a.num_kv_heads, group, a.head_dim};
  dim3 grid(static_cast<unsigned>(plan.num_slots()), static_cast<unsigned>(group));
  kn::DecodeCombineKernel<<<grid, 64, 0, stream>>>(c);
  return LaunchStatus("DecodeCombineKernel");
}

absl::Status PrefillAttention(const PrefillAttentionArgs& a, const KvPlan& plan, const void* plan_device,
                              cudaStream_t stream) {
  LIVEKV_RETURN_IF_ERROR(CheckHeads("prefill_attention", a.num_q_heads, a.num_kv_heads, a.head_dim));
  if (a.n < 0) return absl::InvalidArgumentError(absl::StrCat("prefill_attention: n ", a.n));
  if (plan.num_seqs() != 1 || plan.num_kv_heads() != a.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_attention: the context plan has ", plan.num_seqs(),
                                                   " sequences x ", plan.num_kv_heads(), " KV heads, expected 1 x ",
                                                   a.num_kv_heads));
  }
  if (a.sliding_window < 0 || (a.sliding_window > 0 && plan.num_runs() > 0 && !plan.has_positions())) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_attention: sliding window ", a.sliding_window,
                                                   " needs positional context runs (plan with positions)"));
  }
  if (a.pos0 < 0 || !std::isfinite(a.scale)) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_attention: pos0 ", a.pos0, ", scale ", a.scale));
  }
  if (a.n == 0) return absl::OkStatus();
  if (!a.q || !a.k || !a.v || !a.out || !plan_device || !Aligned16(a.q) || !Aligned16(a.k) || !Aligned16(a.v) ||
      !Aligned16(plan_device)) {
    return absl::InvalidArgumentError("prefill_attention: q, k, v, out and the plan must be non-null, 16-byte aligned");
  }
  if (static_cast<int64_t>(a.n) * (a.num_q_heads / a.num_kv_heads) > int64_t{INT32_MAX} * kn::kPrefillRows / 2) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_attention: chunk of ", a.n, " tokens too long"));
  }
  kn::PrefillParams p;
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.out = a.out;
  p.table = plan.Table(plan_device);
  p.n = a.n;
  p.hq = a.num_q_heads;
  p.hkv = a.num_kv_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  p.pos0 = a.pos0;
  p.scale_log2 = a.scale * kn::kLog2e;
  p.window = a.sliding_window;
  bool wgmma = false;
  if (a.kernel != PrefillKernel::kMmaSync) {
    LIVEKV_ASSIGN_OR_RETURN(const bool sm90, CurrentDeviceIsSm90());
    wgmma = sm90 && (a.head_dim == 64 || a.head_dim == 128);
    if (a.kernel != PrefillKernel::kAuto && !wgmma) {
      return absl::FailedPreconditionError(absl::StrCat("prefill_attention: the wgmma kernels need an sm_90 device ",
                                                        "and head_dim 64 or 128; head_dim ", a.head_dim));
    }
  }
  if (wgmma && a.kernel != PrefillKernel::kWgmma) {
    return a.head_dim == 64 ? LaunchPrefillWs<64>(p, stream) : LaunchPrefillWs<128>(p, stream);
  }
  if (wgmma) return a.head_dim == 64 ? LaunchPrefillWgmma<64>(p, stream) : LaunchPrefillWgmma<128>(p, stream);
  switch (a.head_dim) {
    case 32: return LaunchPrefill<32>(p, stream);
    case 64: return LaunchPrefill<64>(p, stream);
    case 128: return LaunchPrefill<128>(p, stream);
    default: return LaunchPrefill<256>(p, stream);
  }
}

}  // namespace cuda
}  // namespace livekv
