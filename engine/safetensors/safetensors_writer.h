// File: engine/safetensors/safetensors_writer.h
//
// Writes safetensors files (format in safetensors.h) as the reference implementation does: compact JSON
// header padded with spaces so the data region starts at a multiple of 8 bytes, "__metadata__" first, then
// the tensors in the order given, packed back to back without holes.
//
// Files are written to a temporary file in the same directory, fsynced, then renamed over the target, so a
// crash never leaves a half-written file at the target path.
//
// Thread-safety: the functions share no state; concurrent calls must write different paths.
#ifndef LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_WRITER_H_
#define LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/dtype.h"

namespace livekv {

// One tensor to write. `data` is borrowed for the duration of the call and holds the elements in row-major
// order, little-endian.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // [] for a scalar.
  absl::Span<const uint8_t> data;
};

// Writes `tensors` and `metadata` to `path`, replacing any existing file.
// Errors: INVALID_ARGUMENT when a name is duplicated, is "__metadata__" or is not UTF-8 (same for metadata), a
// dim is negative, or data.size() != elements * DTypeSize(dtype) (the message names the tensor and sizes);
// the errno-derived code naming the path on I/O failure, in which case `path` is untouched.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes a sharded checkpoint into `dir` (created if missing, one level) as Hugging Face save_pretrained does:
// tensors, in order, go greedily into model-00001-of-0000N.safetensors, ... each holding at most
// `max_shard_bytes` of data, except that a larger tensor gets a shard of its own (tensors are never split);
// each shard carries metadata {"format": "pt"}. Then model.safetensors.index.json, with
// {"metadata": {"total_size": <data bytes>}, "weight_map": {tensor: shard}}, is written last, so a crash
// leaves no index. Always writes an index, even for one shard (or no tensors).
// Errors: as WriteSafetensors, validated for all tensors before anything is written; INVALID_ARGUMENT when
// max_shard_bytes is 0; FAILED_PRECONDITION when `dir` holds a model.safetensors, which readers (Hugging Face
// and SafetensorsSet::OpenDir) would load instead of the index. Stale shards of an earlier save are not removed.
absl::Status WriteShardedSafetensors(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                                     size_t max_shard_bytes);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_WRITER_H_
