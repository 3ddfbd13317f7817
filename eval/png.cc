#include "eval/png.h"

#include <zlib.h>

#include <vector>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace {

void PutU32(uint32_t v, std::string* out) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

// length, type, data, CRC-32 of type and data (PNG §5.3).
void PutChunk(const char type[4], const std::string& data, std::string* out) {
  PutU32(static_cast<uint32_t>(data.size()), out);
  const std::string body = std::string(type, 4) + data;
  out->append(body);
  PutU32(static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())), out);
}

}  // namespace

absl::StatusOr<std::string> EncodePng(int width, int height, absl::Span<const uint8_t> rgb) {
  constexpr int kMaxSide = 1 << 14;
  if (width <= 0 || height <= 0 || width > kMaxSide || height > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrCat("PNG size must be in [1, ", kMaxSide, "], saw ", width, "x", height));
  }
  const size_t row = static_cast<size_t>(width) * 3;
  if (rgb.size() != row * height) {
    return absl::InvalidArgumentError(
        absl::StrCat("PNG of ", width, "x", height, " needs ", row * height, " RGB bytes, saw ", rgb.size()));
  }
  // Scanlines, each led by its filter type (0: none).
  std::vector<uint8_t> raw;
  raw.reserve((row + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + y * row, rgb.begin() + (y + 1) * row);
  }
  uLongf packed_size = compressBound(raw.size());
  std::string packed(packed_size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(&packed[0]), &packed_size, raw.data(), raw.size(), 9);
  if (rc != Z_OK) return absl::InternalError(absl::StrCat("zlib compress2 failed with ", rc));
  packed.resize(packed_size);

  std::string out = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  PutU32(width, &ihdr);
  PutU32(height, &ihdr);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace
  PutChunk("IHDR", ihdr, &out);
  PutChunk("IDAT", packed, &out);
  PutChunk("IEND", "", &out);
  return out;
}

}  // namespace livekv
