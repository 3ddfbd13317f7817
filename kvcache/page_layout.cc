#include "kvcache/page_layout.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace livekv {

absl::Status PageLayout::Validate() const {
  if (page_tokens <= 0) return absl::InvalidArgumentError(absl::StrCat("page_tokens must be positive, saw ", page_tokens));
  if (head_dim <= 0) return absl::InvalidArgumentError(absl::StrCat("head_dim must be positive, saw ", head_dim));
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV dtype must be F32, BF16 or F16, saw ", DTypeName(dtype)));
  }
  return absl::OkStatus();
}

void TokenMajorToPages(const PageLayout& layout, const void* k, const void* v, int64_t n, int32_t num_heads,
                       int32_t head, uint8_t* pages, int64_t first_row) {
  const size_t row = layout.row_bytes();
  const uint8_t* ks = static_cast<const uint8_t*>(k);
  const uint8_t* vs = static_cast<const uint8_t*>(v);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t r = first_row + t;
    uint8_t* page = pages + (r / layout.page_tokens) * layout.page_bytes();
    const int32_t in_page = static_cast<int32_t>(r % layout.page_tokens);
    const size_t src = (static_cast<size_t>(t) * num_heads + head) * row;
    std::memcpy(layout.KRow(page, in_page), ks + src, row);
    std::memcpy(layout.VRow(page, in_page), vs + src, row);
  }
}

void PagesToTokenMajor(const PageLayout& layout, const uint8_t* pages, int64_t first_row, int64_t n,
                       int32_t num_heads, int32_t head, void* k, void* v) {
  const size_t row = layout.row_bytes();
  uint8_t* kd = static_cast<uint8_t*>(k);
  uint8_t* vd = static_cast<uint8_t*>(v);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t r = first_row + t;
    const uint8_t* page = pages + (r / layout.page_tokens) * layout.page_bytes();
    const int32_t in_page = static_cast<int32_t>(r % layout.page_tokens);
    const size_t dst = (static_cast<size_t>(t) * num_heads + head) * row;
    std::memcpy(kd + dst, layout.KRow(page, in_page), row);
    std::memcpy(vd + dst, layout.VRow(page, in_page), row);
  }
}

}  // namespace livekv
