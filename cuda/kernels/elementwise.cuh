// File: cuda/kernels/elementwise.cuh
//
// Row-wise and element-wise kernels of the transformer layer: embedding gather, RMSNorm, split-QKV + RoPE,
// SwiGLU, residual add. bf16 storage, fp32 arithmetic, one rounding per output. Launchers: cuda/ops/elementwise.h.
// Each kernel starts with GridDependencyWait() (common.cuh), so it may be launched programmatically.
#ifndef LIVEKV_CUDA_KERNELS_ELEMENTWISE_CUH_
#define LIVEKV_CUDA_KERNELS_ELEMENTWISE_CUH_

#include "cuda/kernels/common.cuh"

namespace livekv {
namespace cuda {
namespace kernels {

// out[i][:] = table[ids[i]][:]; a row whose id is outside [0, vocab) is written as zeros (the launcher's
// caller validates ids on the host; the kernel never reads out of bounds).
struct EmbedView {
  const int32_t* ids;  // [n]
  const bf16* table;   // [vocab][hidden]
  bf16* out;           // [n][hidden]
  int64_t n, vocab, hidden;
};

// grid: n blocks; block: any multiple of 32.
template <bool kVec>
static __global__ void EmbedKernel(EmbedView v) {
  GridDependencyWait();  // programmatic launch: inputs come from the previous kernel
  GridDependentsLaunch();
  const int64_t row = blockIdx.x;
  const int32_t id = v.ids[row];
  const bool ok = id >= 0 && id < v.vocab;
  bf16* dst = v.out + row * v.hidden;
  const bf16* src = v.table + (ok ? static_cast<int64_t>(id) : 0) * v.hidden;
  if (kVec) {
    const int64_t chunks = v.hidden / 8;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      reinterpret_cast<uint4*>(dst)[c] = ok ? reinterpret_cast<const uint4*>(src)[c] : make_uint4(0, 0, 0, 0);
    }
  } else {
    for (int64_t c = threadIdx.x; c < v.hidden; c += blockDim.x) dst[c] = ok ? src[c] : ToBf16(0.0f);
  }
}

// out = weight * (x / sqrt(mean(x^2) + eps)), per row: fp32 statistics, x*inv rounded to bf16 first and then
// multiplied by the weight (transformers' LlamaRMSNorm order: `weight * hidden.to(input_dtype)`).
struct RmsNormView {
  const bf16* x;       // [rows][hidden]
  const bf16* weight;  // [hidden]
  bf16* out;           // [rows][hidden]
  int64_t rows, hidden;
  float eps;
};

// grid: rows; block: multiple of 32 (<= 1024).
template <bool kVec>
static __global__ void RmsNormKernel(RmsNormView v) {
  GridDependencyWait();  // programmatic launch: inputs come from the previous kernel
  GridDependentsLaunch();
  __shared__ float scratch[32];
  const bf16* x = v.x + blockIdx.x * v.hidden;
  bf16* out = v.out + blockIdx.x * v.hidden;
  float ss = 0.0f;
  if (kVec) {
    for (int64_t c = threadIdx.x; c < v.hidden / 8; c += blockDim.x) {
      float f[8];
      Unpack8(reinterpret_cast<const uint4*>(x)[c], f);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
    }
  } else {
    for (int64_t c = threadIdx.x; c < v.hidden; c += blockDim.x) {
      const float f = ToFloat(x[c]);
      ss += f * f;
    }
  }
  ss = BlockSum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(v.hidden) + v.eps);
  if (kVec) {
    for (int64_t c = threadIdx.x; c < v.hidden / 8; c += blockDim.x) {
      float f[8], w[8];
      Unpack8(reinterpret_cast<const uint4*>(x)[c], f);
      Unpack8(reinterpret_cast<const uint4*>(v.weight)[c], w);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = w[i] * ToFloat(ToBf16(f[i] * inv));
      reinterpret_cast<uint4*>(out)[c] = PackFloats8(f);
    }
  } else {
    for (int64_t c = threadIdx.x; c < v.hidden; c += blockDim.x) {
      out[c] = ToBf16(ToFloat(v.weight[c]) * ToFloat(ToBf16(ToFloat(x[c]) * inv)));
    }
  }
}

// Splits a fused projection row [(hq + 2 hkv) * d] into q, k, v and rotates q and k (rotate-half RoPE):
//   angle_i = float(pos) * inv_freq[i] (fp32, as engine/rope.h), i < d/2
//   out[i] = x[i] cos - x[i + d/2] sin,  out[i + d/2] = x[i + d/2] cos + x[i] sin.
struct QkvRopeView {
  const bf16* qkv;          // [n][(hq + 2 hkv) * d]
  const float* inv_freq;    // [d / 2]
  const int32_t* positions; // [n], or null: row r is at position pos0 + r
  int64_t pos0;
  bf16* q;                  // [n][hq][d]
  bf16* k;                  // [n][hkv][d]
  bf16* v;                  // [n][hkv][d]
  int64_t n;
  int32_t hq, hkv, d;
};

// grid: n; block: multiple of 32. Dynamic shared memory: d floats (cos and sin of the row's angles).
static __global__ void QkvRopeKernel(QkvRopeView v) {
  GridDependencyWait();  // programmatic launch: inputs come from the previous kernel
  GridDependentsLaunch();
  extern __shared__ float trig[];  // [d/2] cos, [d/2] sin
  const int64_t row = blockIdx.x;
  const int half = v.d / 2;
  const int64_t pos = v.positions != nullptr ? static_cast<int64_t>(v.positions[row]) : v.pos0 + row;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = static_cast<float>(pos) * v.inv_freq[i];
    float s, c;
    sincosf(a, &s, &c);
    trig[i] = c;
    trig[half + i] = s;
  }
  __syncthreads();
  const int64_t width = static_cast<int64_t>(v.hq + 2 * v.hkv) * v.d;
  const bf16* src = v.qkv + row * width;
  // Rotated heads: q heads then k heads, one (head, i) pair per step.
  const int rotated = (v.hq + v.hkv) * half;
  for (int p = threadIdx.x; p < rotated; p += blockDim.x) {
    const int head = p / half, i = p % half;
    const bf16* x = src + static_cast<int64_t>(head) * v.d;
    const float x0 = ToFloat(x[i]), x1 = ToFloat(x[i + half]);
    const float c = trig[i], s = trig[half + i];
    bf16* dst = head < v.hq ? v.q + (row * v.hq + head) * v.d : v.k + (row * v.hkv + (head - v.hq)) * v.d;
    dst[i] = ToBf16(x0 * c - x1 * s);
    dst[i + half] = ToBf16(x1 * c + x0 * s);
  }
  const int64_t vn = static_cast<int64_t>(v.hkv) * v.d;
  const bf16* vsrc = src + static_cast<int64_t>(v.hq + v.hkv) * v.d;
  bf16* vdst = v.v + row * vn;
  for (int64_t e = threadIdx.x; e < vn; e += blockDim.x) vdst[e] = vsrc[e];
}

// out[r][i] = silu(gate[r][i]) * up[r][i], gate = gate_up[r][0, inter), up = gate_up[r][inter, 2 inter).
struct SwiGluView {
  const bf16* gate_up;  // [rows][2 inter]
  bf16* out;            // [rows][inter]
  int64_t rows, inter;
};

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + __expf(-g)); }

// grid: (ceil(inter / (block * per)), rows).
template <bool kVec>
static __global__ void SwiGluKernel(SwiGluView v) {
  GridDependencyWait();  // programmatic launch: inputs come from the previous kernel
  GridDependentsLaunch();
  const int64_t r = blockIdx.y;
  const bf16* g = v.gate_up + r * 2 * v.inter;
  const bf16* u = g + v.inter;
  bf16* o = v.out + r * v.inter;
  if (kVec) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c < v.inter / 8) {
      float gf[8], uf[8];
      Unpack8(reinterpret_cast<const uint4*>(g)[c], gf);
      Unpack8(reinterpret_cast<const uint4*>(u)[c], uf);
#pragma unroll
      for (int i = 0; i < 8; ++i) gf[i] = Silu(gf[i]) * uf[i];
      reinterpret_cast<uint4*>(o)[c] = PackFloats8(gf);
    }
  } else {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c < v.inter) o[c] = ToBf16(Silu(ToFloat(g[c])) * ToFloat(u[c]));
  }
}

// x[i] += y[i] over n elements.
struct AddView {
  bf16* x;
  const bf16* y;
  int64_t n;
};

template <bool kVec>
static __global__ void AddKernel(AddView v) {
  GridDependencyWait();  // programmatic launch: inputs come from the previous kernel
  GridDependentsLaunch();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (kVec) {
    for (int64_t c = start; c < v.n / 8; c += stride) {
      float a[8], b[8];
      Unpack8(reinterpret_cast<const uint4*>(v.x)[c], a);
      Unpack8(reinterpret_cast<const uint4*>(v.y)[c], b);
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] += b[i];
      reinterpret_cast<uint4*>(v.x)[c] = PackFloats8(a);
    }
  } else {
    for (int64_t c = start; c < v.n; c += stride) v.x[c] = ToBf16(ToFloat(v.x[c]) + ToFloat(v.y[c]));
  }
}

// out[r][c] += bias[c] (the GEMM's bias when cuBLASLt's bias epilogue is not used). T: float or bf16.
template <typename T>
static __global__ void AddBiasKernel(T* out, const bf16* bias, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (sizeof(T) == 4) {
      out[i] += ToFloat(bias[i % cols]);
    } else {
      out[i] = ToBf16(ToFloat(out[i]) + ToFloat(bias[i % cols]));
    }
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_KERNELS_ELEMENTWISE_CUH_
