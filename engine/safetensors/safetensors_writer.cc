#include "engine/safetensors/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace livekv {
namespace {

using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";

// `s` as a JSON string literal. INVALID_ARGUMENT (naming `what`) when `s` is not UTF-8, which JSON requires.
absl::StatusOr<std::string> JsonQuote(const std::string& s, absl::string_view what) {
  try {
    return Json(s).dump();
  } catch (const Json::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not valid UTF-8: \"", absl::CHexEscape(s), "\""));
  }
}

// Checks one tensor; returns its byte size.
absl::StatusOr<size_t> CheckTensor(const TensorToWrite& t) {
  const std::string where = absl::StrCat("tensor \"", t.name, "\"");
  if (t.name == kMetadataKey) return absl::InvalidArgumentError(absl::StrCat(where, ": reserved name"));
  if (DTypeSize(t.dtype) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": bad dtype ", static_cast<int>(t.dtype)));
  }
  uint64_t n = DTypeSize(t.dtype);
  for (int64_t d : t.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": negative dim in shape [",
                                                     absl::StrJoin(t.shape, ", "), "]"));
    }
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape [", absl::StrJoin(t.shape, ", "),
                                                     "] overflows 2^64 bytes"));
    }
  }
  if (t.data.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": data has ", t.data.size(), " bytes, but shape [",
                                                   absl::StrJoin(t.shape, ", "), "] of ", DTypeName(t.dtype),
                                                   " needs ", n));
  }
  return static_cast<size_t>(n);
}

absl::Status CheckTensors(const std::vector<TensorToWrite>& tensors) {
  absl::flat_hash_set<absl::string_view> names;
  for (const TensorToWrite& t : tensors) {
    LIVEKV_RETURN_IF_ERROR(CheckTensor(t).status());
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name \"", t.name, "\""));
    }
  }
  return absl::OkStatus();
}

// The header JSON, padded with spaces to a multiple of 8 bytes. REQUIRES: CheckTensors(tensors) is OK.
absl::StatusOr<std::string> BuildHeader(const std::vector<TensorToWrite>& tensors,
                                        const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  if (!metadata.empty()) {
    absl::StrAppend(&header, "\"", kMetadataKey, "\":{");
    for (const auto& [key, value] : metadata) {
      LIVEKV_ASSIGN_OR_RETURN(std::string k, JsonQuote(key, "metadata key"));
      LIVEKV_ASSIGN_OR_RETURN(std::string v, JsonQuote(value, absl::StrCat("metadata value of ", k)));
      absl::StrAppend(&header, header.back() == '{' ? "" : ",", k, ":", v);
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    LIVEKV_ASSIGN_OR_RETURN(std::string name, JsonQuote(t.name, "tensor name"));
    absl::StrAppend(&header, header.size() == 1 ? "" : ",", name, ":{\"dtype\":\"", DTypeName(t.dtype),
                    "\",\"shape\":[", absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", offset, ",",
                    offset + t.data.size(), "]}");
    offset += t.data.size();
  }
  header += "}";
  header.resize((header.size() + 7) / 8 * 8, ' ');
  return header;
}

absl::Status WriteAll(int fd, absl::Span<const uint8_t> bytes, const std::string& path) {
  while (!bytes.empty()) {
    // Linux writes at most ~2 GiB per call anyway.
    const ssize_t n = write(fd, bytes.data(), std::min<size_t>(bytes.size(), size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Writes `parts` to a temporary file beside `path`, fsyncs it and renames it to `path`.
absl::Status WriteFileAtomically(const std::string& path, const std::vector<absl::Span<const uint8_t>>& parts) {
  std::string tmp = absl::StrCat(path, ".tmp.XXXXXX");
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create temporary file ", tmp));
  absl::Status status;
  if (fchmod(fd, 0644) != 0) status = absl::ErrnoToStatus(errno, absl::StrCat("fchmod ", tmp));
  for (size_t i = 0; status.ok() && i < parts.size(); ++i) status = WriteAll(fd, parts[i], tmp);
  if (status.ok() && fsync(fd) != 0) status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp));
  if (close(fd) != 0 && status.ok()) status = absl::ErrnoToStatus(errno, absl::StrCat("close ", tmp));
  if (status.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  if (!status.ok()) unlink(tmp.c_str());
  return status;
}

absl::Span<const uint8_t> AsBytes(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

absl::Status WriteChecked(const std::string& path, const std::vector<TensorToWrite>& tensors,
                          const std::map<std::string, std::string>& metadata) {
  LIVEKV_ASSIGN_OR_RETURN(std::string header, BuildHeader(tensors, metadata));
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  std::vector<absl::Span<const uint8_t>> parts = {absl::MakeConstSpan(length), AsBytes(header)};
  for (const TensorToWrite& t : tensors) parts.push_back(t.data);
  return WriteFileAtomically(path, parts);
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  LIVEKV_RETURN_IF_ERROR(CheckTensors(tensors));
  return WriteChecked(path, tensors, metadata);
}

absl::Status WriteShardedSafetensors(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                                     size_t max_shard_bytes) {
  if (max_shard_bytes == 0) return absl::InvalidArgumentError("max_shard_bytes is 0");
  LIVEKV_RETURN_IF_ERROR(CheckTensors(tensors));
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("mkdir ", dir));
  }
  const std::string prefix = absl::StrCat(absl::StripSuffix(dir, "/"), "/");
  struct stat st;
  if (stat((prefix + "model.safetensors").c_str(), &st) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix, "model.safetensors exists and would shadow the sharded checkpoint"));
  }

  std::vector<std::vector<TensorToWrite>> shards(1);
  size_t shard_bytes = 0;
  size_t total_bytes = 0;
  for (const TensorToWrite& t : tensors) {
    if (!shards.back().empty() && shard_bytes + t.data.size() > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += t.data.size();
    total_bytes += t.data.size();
  }

  Json index;
  index["metadata"]["total_size"] = total_bytes;
  index["weight_map"] = Json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    LIVEKV_RETURN_IF_ERROR(WriteChecked(prefix + name, shards[i], {{"format", "pt"}}));
    for (const TensorToWrite& t : shards[i]) index["weight_map"][t.name] = name;
  }
  // Names are valid UTF-8 (BuildHeader checked), so dump() cannot throw.
  const std::string text = index.dump(2) + "\n";
  return WriteFileAtomically(prefix + "model.safetensors.index.json", {AsBytes(text)});
}

}  // namespace livekv
