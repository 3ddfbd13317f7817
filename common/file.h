// File: common/file.h
//
// Whole-file reads and atomic whole-file writes.
#ifndef LIVEKV_COMMON_FILE_H_
#define LIVEKV_COMMON_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace livekv {

// NOT_FOUND when the file does not exist; other I/O failures carry the errno text. `max_bytes` guards against
// reading a huge file by mistake (FAILED_PRECONDITION naming the size).
absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes = size_t{1} << 30);

// Writes `contents` to a temporary file beside `path` and renames it over `path`, so readers see either the old
// or the new file, never a partial one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// Creates `path` and missing parents (like mkdir -p).
absl::Status MakeDirectories(const std::string& path);

bool FileExists(const std::string& path);

// "a/b" + "c" -> "a/b/c".
std::string JoinPath(absl::string_view dir, absl::string_view name);

// A status for a failed system call: `what` (e.g. "open /x") plus strerror(errno), with a code chosen from errno.
absl::Status ErrnoStatus(absl::string_view what, int err);

}  // namespace livekv

#endif  // LIVEKV_COMMON_FILE_H_
