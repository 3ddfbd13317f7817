#include "engine/safetensors/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace livekv {
namespace {

using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kIndexFileName[] = "model.safetensors.index.json";

// A valid header nests three deep (object > entry > shape); the slack admits unknown extension fields.
constexpr int kMaxJsonDepth = 16;

// Longest string or JSON value quoted in an error message: a hostile header must not make a huge message.
constexpr size_t kMaxShownBytes = 96;

std::string Quoted(absl::string_view s) {
  if (s.size() <= kMaxShownBytes) return absl::StrCat("\"", s, "\"");
  return absl::StrCat("\"", s.substr(0, kMaxShownBytes), "\"... (", s.size(), " bytes)");
}

std::string Shown(const Json& j) {
  // error_handler_t::replace: dump() never throws (strings were UTF-8-checked by the parser anyway).
  std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > kMaxShownBytes) s = absl::StrCat(s.substr(0, kMaxShownBytes), "...");
  return s;
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  return absl::StrCat(absl::StripSuffix(dir, "/"), "/", name);
}

// Whether `path` exists; an error (with errno text) when that cannot be told, e.g. for lack of permission.
absl::StatusOr<bool> Exists(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
}

struct Mapping {
  const uint8_t* addr = nullptr;  // nullptr when size == 0
  size_t size = 0;
};

// Maps a whole regular file read-only. The caller owns the mapping.
absl::StatusOr<Mapping> MapFile(const std::string& path) {
  // O_NONBLOCK so that a FIFO planted where a weight file should be is rejected below instead of blocking
  // the open; it has no effect on regular files.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  absl::Cleanup close_fd = [fd] { close(fd); };
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fstat ", path));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  Mapping m;
  m.size = static_cast<size_t>(st.st_size);
  if (m.size == 0) return m;  // mmap rejects empty ranges.
  void* addr = mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("mmap ", path));
  m.addr = static_cast<const uint8_t*>(addr);
  return m;
}

// True when the brackets of `text` (outside strings) never nest deeper than `limit`. Exact for valid JSON, and
// for invalid JSON it agrees with the parser up to the parser's first error, so running it first bounds the
// parser's stacks: nlohmann keeps 8+ bytes per open level, which a 16 MiB run of '[' would turn into ~160 MB.
bool NestingWithin(absl::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// Parses untrusted JSON without exceptions. Rejects duplicate keys in any object (nlohmann would silently
// keep the last one). If `top_keys` is given it receives the top-level object's keys in text order, which the
// std::map-backed Json loses. `where` prefixes error messages.
absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view where,
                               std::vector<std::string>* top_keys) {
  // JSON text never holds a raw NUL, and nlohmann would stop at one as if the input ended there, silently
  // ignoring whatever follows.
  if (const size_t nul = text.find('\0'); nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": NUL byte at offset ", nul));
  }
  if (!NestingWithin(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": JSON nests deeper than ", kMaxJsonDepth, " levels"));
  }
  std::vector<absl::flat_hash_set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Json::parse_event_t::key) {
      const std::string* key = parsed.get_ptr<const std::string*>();
      if (key != nullptr && !open_objects.empty() && !open_objects.back().insert(*key).second &&
          !duplicate.has_value()) {
        duplicate = *key;
      }
      if (key != nullptr && depth == 1 && top_keys != nullptr) top_keys->push_back(*key);
    }
    return true;
  };
  Json root = Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON"));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": JSON is ", Shown(root), ", not an object"));
  }
  if (duplicate.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate JSON key ", Quoted(*duplicate)));
  }
  return root;
}

// The value of `key` in `object`, or nullptr. REQUIRES: object.is_object().
const Json* Field(const Json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// Reads a JSON integer >= 0 (nlohmann stores "-0" as a signed integer, hence the second case).
bool AsNonNegative(const Json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

struct Offsets {
  uint64_t begin;
  uint64_t end;
};

// Validates one header entry against a data region of `region_size` bytes and fills `info` (data left null).
absl::Status ParseEntry(const std::string& path, const std::string& name, const Json& entry,
                        uint64_t region_size, TensorInfo* info, Offsets* offsets) {
  const std::string where = absl::StrCat(path, ": tensor ", Quoted(name));
  auto error = [&where](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", parts...));
  };
  if (!entry.is_object()) return error("entry is ", Shown(entry), ", not an object");
  const Json* dtype = Field(entry, "dtype");
  const Json* shape = Field(entry, "shape");
  const Json* data_offsets = Field(entry, "data_offsets");
  if (dtype == nullptr) return error("no \"dtype\"");
  if (shape == nullptr) return error("no \"shape\"");
  if (data_offsets == nullptr) return error("no \"data_offsets\"");

  if (!dtype->is_string()) return error("dtype is ", Shown(*dtype), ", not a string");
  const std::string& dtype_name = *dtype->get_ptr<const std::string*>();
  if (!ParseDTypeName(dtype_name, &info->dtype)) return error("unsupported dtype ", Quoted(dtype_name));

  if (!shape->is_array()) return error("shape is ", Shown(*shape), ", not an array");
  uint64_t num_elements = 1;
  for (const Json& dim : *shape) {
    uint64_t d;
    if (!AsNonNegative(dim, &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return error("shape ", Shown(*shape), " has dim ", Shown(dim), ", not an integer in [0, 2^63)");
    }
    if (__builtin_mul_overflow(num_elements, d, &num_elements) ||
        num_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return error("shape ", Shown(*shape), " has more than 2^63 elements");
    }
    info->shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(num_elements, DTypeSize(info->dtype), &nbytes)) {
    return error("shape ", Shown(*shape), " of ", dtype_name, " overflows 2^64 bytes");
  }

  if (!data_offsets->is_array() || data_offsets->size() != 2 ||
      !AsNonNegative((*data_offsets)[0], &offsets->begin) ||
      !AsNonNegative((*data_offsets)[1], &offsets->end)) {
    return error("data_offsets ", Shown(*data_offsets), " is not [begin, end] of non-negative integers");
  }
  if (offsets->begin > offsets->end) {
    return error("data_offsets begin ", offsets->begin, " > end ", offsets->end);
  }
  if (offsets->end > region_size) {
    return error("data_offsets end ", offsets->end, " is past the data region of ", region_size, " bytes");
  }
  if (offsets->end - offsets->begin != nbytes) {
    return error("data_offsets ", Shown(*data_offsets), " span ", offsets->end - offsets->begin,
                 " bytes, but shape ", Shown(*shape), " of ", dtype_name, " needs ", nbytes);
  }
  info->name = name;
  info->nbytes = static_cast<size_t>(nbytes);
  return absl::OkStatus();
}

absl::Status ParseMetadata(const std::string& path, const Json& j, std::map<std::string, std::string>* out) {
  if (j.is_null()) return absl::OkStatus();  // The reference implementation reads null as "no metadata".
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": __metadata__ is ", Shown(j), ", not an object"));
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ value of ", Quoted(it.key()),
                                                     " is ", Shown(it.value()), ", not a string"));
    }
    (*out)[it.key()] = *it.value().get_ptr<const std::string*>();
  }
  return absl::OkStatus();
}

// Parses `header` and checks that the tensors tile `region` exactly, as the reference implementation does:
// sorted by offsets, each must start where the previous one ended, and the last must end at the region's end.
absl::Status ParseHeader(const std::string& path, absl::string_view header, absl::Span<const uint8_t> region,
                         std::vector<TensorInfo>* tensors, std::map<std::string, std::string>* metadata) {
  std::vector<std::string> keys;
  LIVEKV_ASSIGN_OR_RETURN(Json root, ParseJson(header, absl::StrCat(path, ": header"), &keys));
  std::vector<Offsets> offsets;
  for (const std::string& key : keys) {
    auto it = root.find(key);
    CHECK(it != root.end()) << "parser callback saw top-level key " << key << " that the DOM lacks";
    const Json& value = *it;
    if (key == kMetadataKey) {
      LIVEKV_RETURN_IF_ERROR(ParseMetadata(path, value, metadata));
      continue;
    }
    TensorInfo info{};
    Offsets o;
    LIVEKV_RETURN_IF_ERROR(ParseEntry(path, key, value, region.size(), &info, &o));
    info.data = region.data() + o.begin;
    tensors->push_back(std::move(info));
    offsets.push_back(o);
  }

  std::vector<size_t> order(tensors->size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&offsets](size_t a, size_t b) {
    return std::make_pair(offsets[a].begin, offsets[a].end) < std::make_pair(offsets[b].begin, offsets[b].end);
  });
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (size_t i : order) {
    const TensorInfo& t = (*tensors)[i];
    if (offsets[i].begin < cursor) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", Quoted(t.name), " at data_offsets [", offsets[i].begin, ", ", offsets[i].end,
          "] overlaps tensor ", Quoted(previous->name), " ending at ", cursor));
    }
    if (offsets[i].begin > cursor) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": data region has a hole [", cursor, ", ",
                                                     offsets[i].begin, ") before tensor ", Quoted(t.name)));
    }
    cursor = offsets[i].end;
    previous = &t;
  }
  if (cursor != region.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": data region has ", region.size() - cursor,
                                                   " bytes after the last tensor, which ends at ", cursor));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // Open checked that this cannot overflow.
  return n;
}

void SafetensorsFile::Unmapper::operator()(const uint8_t* addr) const {
  munmap(const_cast<uint8_t*>(addr), size);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  LIVEKV_ASSIGN_OR_RETURN(Mapping m, MapFile(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile);
  file->path_ = path;
  file->mapping_ = std::unique_ptr<const uint8_t, Unmapper>(m.addr, Unmapper{m.size});

  if (m.size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", m.size, " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | m.addr[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the limit of ", kMaxSafetensorsHeaderBytes));
  }
  if (header_len > m.size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len, " exceeds the ",
                                                   m.size - 8, " bytes after the length field"));
  }
  const absl::string_view header(reinterpret_cast<const char*>(m.addr + 8), header_len);
  file->data_region_ = absl::MakeConstSpan(m.addr + 8 + header_len, m.size - 8 - header_len);
  LIVEKV_RETURN_IF_ERROR(ParseHeader(path, header, file->data_region_, &file->tensors_, &file->metadata_));
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_.emplace(file->tensors_[i].name, i);
  return file;
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SafetensorsSet>> SafetensorsSet::OpenDir(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("model directory ", dir));
  if (!S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));

  std::unique_ptr<SafetensorsSet> set(new SafetensorsSet);
  set->dir_ = dir;
  const std::string single = JoinPath(dir, kSingleFileName);
  const std::string index = JoinPath(dir, kIndexFileName);
  LIVEKV_ASSIGN_OR_RETURN(const bool has_single, Exists(single));
  if (has_single) {
    set->source_ = single;
    LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    for (const TensorInfo& t : file->tensors()) set->tensors_.emplace(t.name, &t);
    set->files_.push_back(std::move(file));
    return set;
  }
  LIVEKV_ASSIGN_OR_RETURN(const bool has_index, Exists(index));
  if (!has_index) {
    return absl::NotFoundError(absl::StrCat("no model weights: neither ", single, " nor ", index, " exists"));
  }
  set->source_ = index;

  LIVEKV_ASSIGN_OR_RETURN(Mapping m, MapFile(index));
  absl::Cleanup unmap = [m] {
    if (m.addr != nullptr) munmap(const_cast<uint8_t*>(m.addr), m.size);
  };
  if (m.size > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(index, ": ", m.size, " bytes, more than the limit of ",
                                                   kMaxSafetensorsHeaderBytes));
  }
  LIVEKV_ASSIGN_OR_RETURN(
      Json root, ParseJson(absl::string_view(reinterpret_cast<const char*>(m.addr), m.size), index, nullptr));
  const Json* weight_map = Field(root, "weight_map");
  if (weight_map == nullptr) return absl::InvalidArgumentError(absl::StrCat(index, ": no \"weight_map\""));
  if (!weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index, ": weight_map is ", Shown(*weight_map), ", not an object"));
  }

  std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensor names
  for (auto it = weight_map->begin(); it != weight_map->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": weight_map entry for tensor ", Quoted(it.key()),
                                                     " is ", Shown(it.value()), ", not a string"));
    }
    const std::string& shard = *it.value().get_ptr<const std::string*>();
    // Shards must be plain names inside `dir`; a NUL would silently truncate the path given to open().
    if (shard.empty() || shard == "." || absl::StrContains(shard, "..") ||
        shard.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": tensor ", Quoted(it.key()),
                                                     " maps to shard ", Quoted(shard),
                                                     ", which is not a plain file name in the directory"));
    }
    by_shard[shard].push_back(it.key());
  }

  for (const auto& [shard, names] : by_shard) {
    const std::string shard_path = JoinPath(dir, shard);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (absl::IsNotFound(file.status())) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": shard ", Quoted(shard), " (holding tensor ",
                                                     Quoted(names.front()), ") is missing: ",
                                                     file.status().message()));
    }
    if (!file.ok()) return file.status();
    for (const std::string& name : names) {
      const TensorInfo* t = (*file)->Find(name);
      if (t == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index, ": tensor ", Quoted(name), " is mapped to shard ",
                                                       shard_path, ", which does not contain it"));
      }
      set->tensors_.emplace(name, t);
    }
    set->files_.push_back(*std::move(file));
  }
  return set;
}

absl::StatusOr<const TensorInfo*> SafetensorsSet::Get(absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", Quoted(name), " not found in model directory ", dir_, " (", source_, ")"));
  }
  return it->second;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace livekv
