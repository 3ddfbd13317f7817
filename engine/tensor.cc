#include "engine/tensor.h"

#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace livekv {

void Shape::push_back(int64_t d) {
  CHECK_LT(rank_, kMaxRank) << "tensors have at most " << kMaxRank << " dimensions";
  dims_[rank_++] = d;
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) { return "[" + absl::StrJoin(shape, ", ") + "]"; }

TensorView TensorView::Rows(int64_t begin, int64_t count) const {
  CHECK(!shape.empty());
  CHECK(begin >= 0 && count >= 0 && begin + count <= shape[0]) << begin << "+" << count << " of " << shape[0];
  TensorView v = *this;
  const int64_t row_elems = shape[0] == 0 ? 0 : numel() / shape[0];
  v.data = static_cast<char*>(data) + begin * row_elems * DTypeSize(dtype);
  v.shape[0] = count;
  return v;
}

TensorView TensorView::Reshaped(Shape new_shape) const {
  CHECK_EQ(NumElements(new_shape), numel()) << ShapeToString(new_shape) << " vs " << ShapeToString(shape);
  TensorView v = *this;
  v.shape = std::move(new_shape);
  return v;
}

}  // namespace livekv
