#include "engine/cuda/upload_ring.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {

absl::StatusOr<std::unique_ptr<UploadRing>> UploadRing::Create(size_t bytes, int chunks) {
  if (chunks < 2 || bytes < static_cast<size_t>(chunks) * 256) {
    return absl::InvalidArgumentError(absl::StrCat("upload ring: ", bytes, " bytes in ", chunks, " chunks"));
  }
  std::unique_ptr<UploadRing> r(new UploadRing());
  r->chunk_bytes_ = bytes / chunks / 256 * 256;
  LIVEKV_ASSIGN_OR_RETURN(r->host_, cuda::PinnedHostBuffer::Create(r->chunk_bytes_ * chunks, /*mapped=*/true));
  LIVEKV_ASSIGN_OR_RETURN(void* host_dev, r->host_.device_pointer());  // Stage's addresses (= host's under UVA)
  r->host_device_ = static_cast<uint8_t*>(host_dev);
  LIVEKV_ASSIGN_OR_RETURN(r->device_, cuda::DeviceBuffer::Create(r->chunk_bytes_ * chunks));
  LIVEKV_ASSIGN_OR_RETURN(r->aside_, cuda::Stream::Create());
  LIVEKV_ASSIGN_OR_RETURN(r->aside_done_, cuda::Event::Create());
  for (int i = 0; i < chunks; ++i) {
    LIVEKV_ASSIGN_OR_RETURN(cuda::Event e, cuda::Event::Create());
    r->chunk_done_.push_back(std::move(e));
  }
  return r;
}

absl::StatusOr<void*> UploadRing::Upload(const void* src, size_t bytes, cudaStream_t stream) {
  return Put(src, bytes, stream, Mode::kInStream);
}

absl::StatusOr<const void*> UploadRing::Stage(const void* src, size_t bytes, cudaStream_t stream) {
  LIVEKV_ASSIGN_OR_RETURN(void* p, Put(src, bytes, stream, Mode::kZeroCopy));
  return static_cast<const void*>(p);
}

absl::StatusOr<void*> UploadRing::UploadAside(const void* src, size_t bytes, cudaStream_t stream) {
  return Put(src, bytes, stream, Mode::kAside);
}

absl::StatusOr<void*> UploadRing::Put(const void* src, size_t bytes, cudaStream_t stream, Mode mode) {
  const size_t n = (bytes + 255) / 256 * 256;
  if (n > chunk_bytes_) {
    ++oversized_;
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));  // big_ may still be read by earlier work
    if (big_.bytes() < n) {
      big_.Reset();
      LIVEKV_ASSIGN_OR_RETURN(big_, cuda::DeviceBuffer::Create(n));
    }
    // On the stream, then waited for: a plain cudaMemcpy runs on the legacy stream, may return before its DMA lands,
    // and this (non-blocking) stream's next kernel would not wait for it.
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(big_.data(), src, bytes, cudaMemcpyHostToDevice, stream));
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return big_.data();
  }
  if (offset_ + n > chunk_bytes_) {
    // Leave this chunk: its copies (and the kernels reading its pinned bytes) complete when this event does (the
    // aside copies too: `stream` waited for each of them). Enter the next one once its previous users (recorded
    // when the ring last left it) have completed.
    LIVEKV_RETURN_IF_ERROR(chunk_done_[chunk_].Record(stream));
    chunk_ = (chunk_ + 1) % static_cast<int>(chunk_done_.size());
    offset_ = 0;
    LIVEKV_RETURN_IF_ERROR(chunk_done_[chunk_].Synchronize());
  }
  const size_t at = static_cast<size_t>(chunk_) * chunk_bytes_ + offset_;
  uint8_t* h = host_.as<uint8_t>() + at;
  uint8_t* d = device_.as<uint8_t>() + at;
  std::memcpy(h, src, bytes);
  offset_ += n;
  switch (mode) {
    case Mode::kZeroCopy:
      return static_cast<void*>(host_device_ + at);
    case Mode::kInStream:
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream));
      return static_cast<void*>(d);
    case Mode::kAside:
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, aside_.get()));
      LIVEKV_RETURN_IF_ERROR(aside_done_.Record(aside_.get()));
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, aside_done_.get(), 0));
      return static_cast<void*>(d);
  }
  return absl::InternalError("upload ring: unknown mode");
}

}  // namespace livekv
