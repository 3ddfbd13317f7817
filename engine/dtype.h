// File: engine/dtype.h
//
// Element types of tensors, weights and KV pages, and exact conversions between the 16-bit float formats and
// fp32 (round-to-nearest-even on the way down, as PyTorch does).
#ifndef LIVEKV_ENGINE_DTYPE_H_
#define LIVEKV_ENGINE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/strings/string_view.h"

namespace livekv {

enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI32 = 3, kI64 = 4, kU8 = 5 };

// Bytes per element.
inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  return 0;
}

// The safetensors spelling: "F32", "BF16", "F16", "I32", "I64", "U8".
absl::string_view DTypeName(DType t);

// Parses a safetensors dtype name; returns false for names livekv does not handle.
bool ParseDTypeName(absl::string_view name, DType* out);

inline float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts n elements of type `src_type` to fp32. REQUIRES: src_type is kF32, kBF16 or kF16.
void ConvertToF32(const void* src, DType src_type, size_t n, float* dst);

// Converts n fp32 values to `dst_type`. REQUIRES: dst_type is kF32, kBF16 or kF16.
void ConvertFromF32(const float* src, size_t n, DType dst_type, void* dst);

// Converts n elements between any two float types (a copy when they are the same).
// REQUIRES: both are kF32, kBF16 or kF16; src and dst do not overlap.
void ConvertFloats(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_DTYPE_H_
