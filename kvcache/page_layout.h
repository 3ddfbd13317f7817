// File: kvcache/page_layout.h
//
// The byte layout of a KV page: P tokens of one (layer, KV head), head-major ("HND"), K rows then V rows:
//
//   [ K row 0 | K row 1 | ... | K row P-1 | V row 0 | ... | V row P-1 ],  each row head_dim elements of dtype
//
// With P = 32, head_dim = 128 and bf16 a page is one contiguous 16 KiB run, so recalling a page (or a cluster
// stored as consecutive pages) is one large copy. Conversions to and from the token-major layout the model
// produces ([tokens][kv_heads][head_dim]) are exact byte copies.
#ifndef LIVEKV_KVCACHE_PAGE_LAYOUT_H_
#define LIVEKV_KVCACHE_PAGE_LAYOUT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/dtype.h"

namespace livekv {

struct PageLayout {
  int32_t page_tokens = 32;
  int32_t head_dim = 128;
  DType dtype = DType::kBF16;

  size_t row_bytes() const { return static_cast<size_t>(head_dim) * DTypeSize(dtype); }
  size_t page_bytes() const { return 2 * static_cast<size_t>(page_tokens) * row_bytes(); }
  uint8_t* KRow(uint8_t* page, int32_t row) const { return page + row * row_bytes(); }
  uint8_t* VRow(uint8_t* page, int32_t row) const { return page + (page_tokens + row) * row_bytes(); }
  const uint8_t* KRow(const uint8_t* page, int32_t row) const { return page + row * row_bytes(); }
  const uint8_t* VRow(const uint8_t* page, int32_t row) const {
    return page + (page_tokens + row) * row_bytes();
  }
  int64_t PagesFor(int64_t tokens) const { return (tokens + page_tokens - 1) / page_tokens; }

  // INVALID_ARGUMENT naming the field for non-positive sizes or a non-float dtype.
  absl::Status Validate() const;
};

// Writes rows [0, n) of KV head `head` from token-major k, v ([n][num_heads][head_dim], same dtype as the
// layout) into consecutive pages starting at row `first_row` of `pages` (a run of pages; row r lands in page
// r / P at row r % P).
void TokenMajorToPages(const PageLayout& layout, const void* k, const void* v, int64_t n, int32_t num_heads,
                       int32_t head, uint8_t* pages, int64_t first_row);

// The inverse: rows [first_row, first_row + n) of a run of pages into token-major k, v of head `head`.
void PagesToTokenMajor(const PageLayout& layout, const uint8_t* pages, int64_t first_row, int64_t n,
                       int32_t num_heads, int32_t head, void* k, void* v);

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_PAGE_LAYOUT_H_
