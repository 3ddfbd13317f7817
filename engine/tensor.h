// File: engine/tensor.h
//
// Tensors in a backend's memory (host memory for the CPU backend, device memory for CUDA). A TensorView borrows;
// a Tensor owns its bytes through the backend allocation that made it.
#ifndef LIVEKV_ENGINE_TENSOR_H_
#define LIVEKV_ENGINE_TENSOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include <initializer_list>

#include "engine/dtype.h"

namespace livekv {

// Dimensions of a tensor of rank 0 to 4, held by value.
class Shape {
 public:
  static constexpr int kMaxRank = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : Shape(dims.begin(), dims.end()) {}
  template <typename It>
  Shape(It begin, It end) {
    for (It it = begin; it != end; ++it) push_back(*it);
  }
  void push_back(int64_t d);  // CHECK-fails past kMaxRank
  size_t size() const { return rank_; }
  bool empty() const { return rank_ == 0; }
  int64_t& operator[](size_t i) { return dims_[i]; }
  int64_t operator[](size_t i) const { return dims_[i]; }
  const int64_t* begin() const { return dims_; }
  const int64_t* end() const { return dims_ + rank_; }
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i) {
      if (a.dims_[i] != b.dims_[i]) return false;
    }
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

 private:
  int64_t dims_[kMaxRank] = {0, 0, 0, 0};
  int rank_ = 0;
};

int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);

// A dense, row-major, contiguous tensor in some backend's memory. Does not own `data`.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  int64_t numel() const { return NumElements(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  int64_t dim(int i) const { return shape[i]; }
  int rank() const { return static_cast<int>(shape.size()); }
  // Rows [begin, begin + count) of the first dimension.
  TensorView Rows(int64_t begin, int64_t count) const;
  // The same bytes with another shape. REQUIRES: same number of elements.
  TensorView Reshaped(Shape new_shape) const;
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

// An owned tensor. Move-only; frees its memory through the deleter given by the allocating backend.
class Tensor {
 public:
  Tensor() = default;
  Tensor(TensorView view, std::function<void(void*)> deleter) : view_(view), deleter_(std::move(deleter)) {}
  ~Tensor() { Reset(); }
  Tensor(Tensor&& other) noexcept : view_(other.view_), deleter_(std::move(other.deleter_)) {
    other.view_ = TensorView();
    other.deleter_ = nullptr;
  }
  Tensor& operator=(Tensor&& other) noexcept {
    if (this != &other) {
      Reset();
      view_ = other.view_;
      deleter_ = std::move(other.deleter_);
      other.view_ = TensorView();
      other.deleter_ = nullptr;
    }
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  const TensorView& view() const { return view_; }
  void* data() const { return view_.data; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return view_.nbytes(); }
  bool empty() const { return view_.data == nullptr; }

 private:
  void Reset() {
    if (deleter_ && view_.data) deleter_(view_.data);
    view_ = TensorView();
    deleter_ = nullptr;
  }

  TensorView view_;
  std::function<void(void*)> deleter_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TENSOR_H_
