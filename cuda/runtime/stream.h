// File: cuda/runtime/stream.h
//
// Move-only owners of a CUDA stream and a CUDA event. Created on the calling thread's current device.
//
//   LIVEKV_ASSIGN_OR_RETURN(Stream s, Stream::Create());
//   LIVEKV_ASSIGN_OR_RETURN(Event e, Event::Create(/*timing=*/true));
//   LIVEKV_RETURN_IF_ERROR(e.Record(s.get()));
//
// Thread-safety: the objects may be used from any thread (CUDA streams and events are thread-safe); moving or
// destroying one while another thread uses it is a caller bug. Destroying a stream with pending work is allowed
// (CUDA releases it when the work completes).
#ifndef LIVEKV_CUDA_RUNTIME_STREAM_H_
#define LIVEKV_CUDA_RUNTIME_STREAM_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace livekv {
namespace cuda {

class Stream {
 public:
  // A stream that does not synchronise with the legacy default stream (cudaStreamNonBlocking) unless
  // `blocking`. priority: lower numbers are higher priority (cudaDeviceGetStreamPriorityRange); 0 = default.
  static absl::StatusOr<Stream> Create(bool blocking = false, int priority = 0);

  Stream() = default;
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(other.stream_) { other.stream_ = nullptr; }
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  // Waits for all work queued on the stream.
  absl::Status Synchronize() const;
  // Makes later work on this stream wait for `event` (recorded on any stream).
  absl::Status WaitEvent(cudaEvent_t event) const;

 private:
  explicit Stream(cudaStream_t s) : stream_(s) {}
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  // timing = false creates the cheaper cudaEventDisableTiming event (for ordering only).
  static absl::StatusOr<Event> Create(bool timing = false);

  Event() = default;
  ~Event();
  Event(Event&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  absl::Status Record(cudaStream_t stream) const;
  absl::Status Synchronize() const;
  // True when the work before the last Record has completed.
  absl::StatusOr<bool> Query() const;
  // Milliseconds between two recorded timing events. REQUIRES: both completed.
  static absl::StatusOr<float> ElapsedMs(const Event& start, const Event& end);

 private:
  explicit Event(cudaEvent_t e) : event_(e) {}
  cudaEvent_t event_ = nullptr;
};

}  // namespace cuda
}  // namespace livekv

#endif  // LIVEKV_CUDA_RUNTIME_STREAM_H_
