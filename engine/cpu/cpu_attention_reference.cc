// The CpuAttention of before the blocked kernel, verbatim but for its name and its validation, which it shares
// with CpuAttention (see cpu_attention_reference.h).
#include "engine/cpu/cpu_attention_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/cpu/cpu_attention.h"

namespace livekv {
namespace {

// Row access for the three storage types of context K/V.
inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) { return BF16ToF32(p[i]); }

struct F16Row {
  const uint16_t* p;
};

template <typename T>
inline float Dot(const float* q, const T* k, int64_t d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) acc += q[i] * Load(k, i);
  return acc;
}

inline float DotF16(const float* q, const uint16_t* k, int64_t d) {
  float acc = 0.0f;
  for (int64_t i = 0; i < d; ++i) acc += q[i] * F16ToF32(k[i]);
  return acc;
}

template <typename T>
inline void Axpy(float a, const T* x, float* y, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) y[i] += a * Load(x, i);
}

inline void AxpyF16(float a, const uint16_t* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += a * F16ToF32(x[i]);
}

// One visible key/value row: where it lives and its type.
struct RowRef {
  const void* k;
  const void* v;
  DType dtype;
};

float DotRow(const float* q, const RowRef& r, int64_t d) {
  switch (r.dtype) {
    case DType::kF32: return Dot(q, static_cast<const float*>(r.k), d);
    case DType::kBF16: return Dot(q, static_cast<const uint16_t*>(r.k), d);
    default: return DotF16(q, static_cast<const uint16_t*>(r.k), d);
  }
}

void AccumulateRow(float p, const RowRef& r, float* out, int64_t d) {
  switch (r.dtype) {
    case DType::kF32: Axpy(p, static_cast<const float*>(r.v), out, d); break;
    case DType::kBF16: Axpy(p, static_cast<const uint16_t*>(r.v), out, d); break;
    default: AxpyF16(p, static_cast<const uint16_t*>(r.v), out, d); break;
  }
}

}  // namespace

absl::Status ReferenceCpuAttention(const AttentionArgs& a, ThreadPool* pool) {
  absl::Status valid = ValidateAttentionArgs(a);
  if (!valid.ok()) return valid;
  const int64_t n = a.q.dim(0), hq = a.q.dim(1), d = a.q.dim(2), hkv = a.k.dim(1);
  const int64_t group = hq / hkv;
  const float* q = a.q.as<float>();
  const float* kc = a.k.as<float>();
  const float* vc = a.v.as<float>();
  float* out = a.out.as<float>();
  const int64_t window = a.sliding_window;

  // One task per (kv head, chunk row): every query head of the group scores the same key rows, so each row is
  // read once per group.
  pool->ParallelFor(hkv * n, [&](int64_t begin, int64_t end) {
    std::vector<RowRef> rows;
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / n, r = task % n;
      const int64_t qpos = a.pos0 + r;
      rows.clear();
      if (a.context != nullptr) {
        const size_t elem = DTypeSize(a.context->dtype);
        for (const KvRun& run : a.context->heads[g]) {
          for (int32_t j = 0; j < run.n; ++j) {
            if (window > 0 && qpos - (run.first_position + j) >= window) continue;
            rows.push_back({static_cast<const char*>(run.k) + j * d * elem,
                            static_cast<const char*>(run.v) + j * d * elem, a.context->dtype});
          }
        }
      }
      for (int64_t j = 0; j <= r; ++j) {
        if (window > 0 && r - j >= window) continue;
        rows.push_back({kc + (j * hkv + g) * d, vc + (j * hkv + g) * d, DType::kF32});
      }
      const int64_t m = static_cast<int64_t>(rows.size());
      scores.resize(group * m);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t h = 0; h < group; ++h) {
          scores[h * m + i] = DotRow(q + (r * hq + g * group + h) * d, rows[i], d) * a.scale;
        }
      }
      for (int64_t h = 0; h < group; ++h) {
        float* s = &scores[h * m];
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < m; ++i) mx = std::max(mx, s[i]);
        float sum = 0.0f;
        for (int64_t i = 0; i < m; ++i) {
          s[i] = std::exp(s[i] - mx);
          sum += s[i];
        }
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < m; ++i) s[i] *= inv;
      }
      for (int64_t h = 0; h < group; ++h) {
        float* o = out + (r * hq + g * group + h) * d;
        std::fill(o, o + d, 0.0f);
        const float* s = &scores[h * m];
        for (int64_t i = 0; i < m; ++i) AccumulateRow(s[i], rows[i], o, d);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace livekv
