// File: engine/safetensors/safetensors.h
//
// Read-only access to safetensors checkpoints (https://github.com/huggingface/safetensors): one file
// (SafetensorsFile) or a Hugging Face model directory, single-file or sharded (SafetensorsSet).
//
// Format: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}
// then the data region; offsets are relative to its start.
//
// Files are untrusted input. Open validates everything before exposing a single byte: a truncated, hostile or
// inconsistent file yields INVALID_ARGUMENT naming the path, the tensor and the value seen, never a crash or a
// read outside the mapping. The rules are those of the reference implementation: header at most 16 MiB (the reference allows 100 MB; real headers are under 1 MiB), known
// dtypes only, non-negative dims, no element-count overflow, end - begin == elements * dtype size, and tensors
// that tile the data region exactly (no overlaps, no holes, no trailing bytes). Unknown per-tensor fields are
// ignored; duplicate JSON keys are rejected.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsSet> weights, SafetensorsSet::OpenDir(dir));
//   LIVEKV_ASSIGN_OR_RETURN(const TensorInfo* wq, weights->Get("model.layers.0.self_attn.q_proj.weight"));
#ifndef LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_H_
#define LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/dtype.h"

namespace livekv {

// Largest header accepted, as in the reference implementation (which uses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{16} << 20;

// One tensor of an open file. `data` points into the file's read-only mapping and lives as long as the
// SafetensorsFile. It is not necessarily aligned for `dtype` (files from other writers may not pad the
// header), so read elements with memcpy. For a zero-size tensor nbytes == 0 and data must not be read.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // [] for a scalar; every dim >= 0.
  const uint8_t* data;
  size_t nbytes;  // == num_elements() * DTypeSize(dtype).

  int64_t num_elements() const;
};

// One memory-mapped .safetensors file.
//
// Thread-safety: immutable after Open, so all methods may be called concurrently. The file must not be
// truncated or rewritten in place while open (writers here replace files by rename, which is safe): a
// shrunk file makes reads through the mapping fault, as with any mmap.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: NOT_FOUND / PERMISSION_DENIED / ... (with errno text) when the file
  // cannot be opened or mapped; INVALID_ARGUMENT when it is not a regular file or not a valid safetensors file.
  // Memory: the data is never copied, but the header's JSON tree is held while parsing, up to ~25x the header
  // length (~400 MB for a hostile header at the 16 MiB limit; real headers are well under 1 MiB).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile() = default;  // Unmaps; every TensorInfo::data becomes invalid.
  SafetensorsFile(SafetensorsFile&&) = default;  // TensorInfo::data stays valid: the mapping does not move.
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }

  // All tensors, in header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The tensor called `name`, or nullptr if absent.
  const TensorInfo* Find(absl::string_view name) const;

  // The "__metadata__" map; empty when the header has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The bytes after the header; every tensor's [data, data + nbytes) lies inside, and together they cover it.
  absl::Span<const uint8_t> data_region() const { return data_region_; }

 private:
  struct Unmapper {
    size_t size;
    void operator()(const uint8_t* addr) const;
  };

  SafetensorsFile() = default;

  std::string path_;
  std::unique_ptr<const uint8_t, Unmapper> mapping_{nullptr, Unmapper{0}};
  absl::Span<const uint8_t> data_region_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// All weights of a Hugging Face model directory.
//
// Thread-safety: immutable after OpenDir, so all methods may be called concurrently.
class SafetensorsSet {
 public:
  // Opens `dir`/model.safetensors if present (Hugging Face's preference), otherwise
  // `dir`/model.safetensors.index.json, whose "weight_map" maps each tensor name to a shard file in `dir`;
  // the set then holds exactly the tensors of the weight map (other tensors in the shards are ignored).
  // Errors: NOT_FOUND naming the path when `dir` or both files are missing; INVALID_ARGUMENT when the index
  // is malformed, names a shard with "/", "\\", ".." or NUL in it, names a shard that is missing on disk
  // (the index exists, so the directory is inconsistent rather than absent), or maps a tensor to a shard that
  // lacks it; whatever SafetensorsFile::Open returns for each file.
  static absl::StatusOr<std::unique_ptr<SafetensorsSet>> OpenDir(const std::string& dir);

  SafetensorsSet(const SafetensorsSet&) = delete;
  SafetensorsSet& operator=(const SafetensorsSet&) = delete;

  // The tensor called `name`; INVALID_ARGUMENT naming the tensor and the directory when absent (a model
  // asking for a weight its checkpoint lacks is a malformed checkpoint). The pointer lives as long as the set.
  absl::StatusOr<const TensorInfo*> Get(absl::string_view name) const;

  bool Has(absl::string_view name) const { return tensors_.contains(name); }

  // All tensor names, sorted.
  std::vector<std::string> names() const;

  const std::string& dir() const { return dir_; }

 private:
  SafetensorsSet() = default;

  std::string dir_;
  std::string source_;  // The file the names came from: model.safetensors or the index.
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const TensorInfo*> tensors_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_SAFETENSORS_SAFETENSORS_H_
