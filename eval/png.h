// File: eval/png.h
//
// A minimal PNG encoder (8-bit RGB, no interlacing, filter 0 on every row, one zlib-compressed IDAT chunk), for
// the plots of the evaluation. Pure function; thread-safe.
//
//   std::vector<uint8_t> rgb(width * height * 3, 255);
//   LIVEKV_ASSIGN_OR_RETURN(std::string png, EncodePng(width, height, rgb));
#ifndef LIVEKV_EVAL_PNG_H_
#define LIVEKV_EVAL_PNG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace livekv {

// The PNG file of a `width` x `height` image whose pixels are `rgb` (row-major, 3 bytes per pixel).
// INVALID_ARGUMENT for non-positive or oversized dimensions (> 1 << 14) or rgb.size() != width * height * 3;
// INTERNAL if zlib fails.
absl::StatusOr<std::string> EncodePng(int width, int height, absl::Span<const uint8_t> rgb);

}  // namespace livekv

#endif  // LIVEKV_EVAL_PNG_H_
