#include "eval/png.h"

#include <zlib.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace livekv {
namespace {

uint32_t U32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

struct Decoded {
  uint32_t width = 0, height = 0;
  std::string ihdr_tail;            // bit depth .. interlace
  std::vector<std::string> types;   // chunk types in order
  std::vector<uint8_t> pixels;      // RGB, filter bytes removed
};

// An independent reader: walks the chunks, checks each CRC, inflates the IDAT data with zlib and undoes filter 0.
Decoded Decode(const std::string& png) {
  Decoded d;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  for (size_t at = 8; at < png.size();) {
    const uint32_t len = U32(png, at);
    const std::string type = png.substr(at + 4, 4), data = png.substr(at + 8, len);
    const uint32_t crc = U32(png, at + 8 + len);
    const std::string body = type + data;
    EXPECT_EQ(crc, crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())) << type;
    d.types.push_back(type);
    if (type == "IHDR") {
      d.width = U32(data, 0);
      d.height = U32(data, 4);
      d.ihdr_tail = data.substr(8);
    }
    if (type == "IDAT") idat += data;
    at += 12 + len;
  }
  std::vector<uint8_t> raw((d.width * 3 + 1) * d.height);
  uLongf raw_size = raw.size();
  EXPECT_EQ(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), idat.size()), Z_OK);
  EXPECT_EQ(raw_size, raw.size());
  for (uint32_t y = 0; y < d.height; ++y) {
    EXPECT_EQ(raw[y * (d.width * 3 + 1)], 0) << "filter of row " << y;
    d.pixels.insert(d.pixels.end(), raw.begin() + y * (d.width * 3 + 1) + 1, raw.begin() + (y + 1) * (d.width * 3 + 1));
  }
  return d;
}

TEST(PngTest, DecodesBackToThePixels) {
  for (auto [w, h] : {std::pair<int, int>{1, 1}, {7, 3}, {131, 67}}) {
    std::vector<uint8_t> rgb(w * h * 3);
    for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>((i * 37 + i / 7) & 0xff);
    const std::string png = EncodePng(w, h, rgb).value();
    const Decoded d = Decode(png);
    EXPECT_EQ(d.width, uint32_t(w));
    EXPECT_EQ(d.height, uint32_t(h));
    EXPECT_EQ(d.ihdr_tail, std::string("\x08\x02\x00\x00\x00", 5));
    EXPECT_EQ(d.types, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));
    EXPECT_EQ(d.pixels, rgb);
  }
}

TEST(PngTest, RejectsBadSizes) {
  EXPECT_EQ(EncodePng(0, 4, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(2, 2, std::vector<uint8_t>(11)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(1 << 15, 1, std::vector<uint8_t>(3 << 15)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
