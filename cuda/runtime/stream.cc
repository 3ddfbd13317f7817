#include "cuda/runtime/stream.h"

#include "common/logging.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace cuda {

absl::StatusOr<Stream> Stream::Create(bool blocking, int priority) {
  cudaStream_t s = nullptr;
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithPriority(&s, blocking ? cudaStreamDefault : cudaStreamNonBlocking, priority));
  return Stream(s);
}

Stream::~Stream() {
  if (stream_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaStreamDestroy(stream_), "cudaStreamDestroy"));
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaStreamDestroy(stream_), "cudaStreamDestroy"));
    stream_ = other.stream_;
    other.stream_ = nullptr;
  }
  return *this;
}

absl::Status Stream::Synchronize() const { return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

absl::Status Stream::WaitEvent(cudaEvent_t event) const {
  return CudaStatus(cudaStreamWaitEvent(stream_, event, 0), "cudaStreamWaitEvent");
}

absl::StatusOr<Event> Event::Create(bool timing) {
  cudaEvent_t e = nullptr;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return Event(e);
}

Event::~Event() {
  if (event_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaEventDestroy(event_), "cudaEventDestroy"));
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) LIVEKV_CHECK_OK(CudaStatus(cudaEventDestroy(event_), "cudaEventDestroy"));
    event_ = other.event_;
    other.event_ = nullptr;
  }
  return *this;
}

absl::Status Event::Record(cudaStream_t stream) const {
  return CudaStatus(cudaEventRecord(event_, stream), "cudaEventRecord");
}

absl::Status Event::Synchronize() const { return CudaStatus(cudaEventSynchronize(event_), "cudaEventSynchronize"); }

absl::StatusOr<bool> Event::Query() const {
  const cudaError_t err = cudaEventQuery(event_);
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(err);
  return true;
}

absl::StatusOr<float> Event::ElapsedMs(const Event& start, const Event& end) {
  float ms = 0;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, end.event_));
  return ms;
}

}  // namespace cuda
}  // namespace livekv
