// File: engine/cuda/upload_ring.h
//
// Small per-step host-to-device uploads (attention plans, token ids, recall descriptors) without a host sync:
// the bytes are staged in pinned host memory and copied with cudaMemcpyAsync into a device ring at the same
// offset. The ring is cut into chunks; an event recorded when the ring leaves a chunk guards the pinned bytes of
// that chunk, which are reused only once the event has completed (normally long before).
//
//   LIVEKV_ASSIGN_OR_RETURN(auto ring, UploadRing::Create(/*bytes=*/32 << 20, /*chunks=*/8));
//   LIVEKV_ASSIGN_OR_RETURN(void* dev, ring->Upload(plan.bytes().data(), plan.bytes().size(), stream));
//
// The device copy stays valid for work enqueued later on the same stream until the ring wraps around to it
// again (a later copy into it is ordered after that work); work on other streams must not read it.
//
// Three ways to hand small per-launch data (a decode attention plan) to a kernel, which decode steps compare
// (CudaBackendOptions::decode_plans): Upload (a copy in the stream, just before the kernel), Stage (no copy: the
// kernel reads the mapped pinned bytes over PCIe, a dependent read or two per CTA, slow while the recall keeps the
// link busy) and UploadAside (the copy is issued at once on the ring's own stream, which the kernel's stream
// waits for by an event: when the host runs ahead of the device, as in a decode step, the bytes are in device
// memory long before the kernel starts).
// Uploads larger than a chunk go to a dedicated device buffer after a stream synchronisation (rare: slow path).
//
// Thread-safety: one thread at a time.
#ifndef LIVEKV_ENGINE_CUDA_UPLOAD_RING_H_
#define LIVEKV_ENGINE_CUDA_UPLOAD_RING_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/stream.h"

namespace livekv {

class UploadRing {
 public:
  static absl::StatusOr<std::unique_ptr<UploadRing>> Create(size_t bytes, int chunks);

  // Copies `bytes` bytes from host `src` (any host memory; it is staged) to device memory, enqueued on `stream`,
  // and returns the device address (256-byte aligned).
  absl::StatusOr<void*> Upload(const void* src, size_t bytes, cudaStream_t stream);
  // Like Upload, but no copy: returns the pinned staging address, which kernels enqueued on `stream` read directly
  // (zero-copy over PCIe: the staging memory is mapped; its device address) until the ring wraps
  // around to it. For small data read once per launch (decode plans): no copy in the stream, so nothing between two
  // kernels. Oversized data takes Upload's slow path (a device address).
  absl::StatusOr<const void*> Stage(const void* src, size_t bytes, cudaStream_t stream);
  // Like Upload, but the copy runs on the ring's own stream, now, and `stream` waits for it (an event recorded
  // after the copy): nothing but that wait lies in `stream` before the work that reads the bytes.
  absl::StatusOr<void*> UploadAside(const void* src, size_t bytes, cudaStream_t stream);

  size_t chunk_bytes() const { return chunk_bytes_; }
  // Uploads that took the slow path (larger than a chunk).
  int64_t oversized_uploads() const { return oversized_; }

 private:
  UploadRing() = default;
  enum class Mode { kInStream, kZeroCopy, kAside };
  absl::StatusOr<void*> Put(const void* src, size_t bytes, cudaStream_t stream, Mode mode);

  cuda::PinnedHostBuffer host_;  // mapped
  uint8_t* host_device_ = nullptr;  // host_'s device-side address
  cuda::DeviceBuffer device_;
  cuda::DeviceBuffer big_;  // the slow path's buffer
  std::vector<cuda::Event> chunk_done_;
  cuda::Stream aside_;       // UploadAside's copies
  cuda::Event aside_done_;   // recorded after each of them, waited for by the caller's stream
  size_t chunk_bytes_ = 0;
  int chunk_ = 0;
  size_t offset_ = 0;  // within the current chunk
  int64_t oversized_ = 0;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CUDA_UPLOAD_RING_H_
