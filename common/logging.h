// File: common/logging.h
//
// Logging and invariant checks for livekv: glog's LOG(severity) and CHECK family.
// Policy (STYLE.md "Errors"): CHECK only broken internal invariants and unrecoverable device errors, never the
// contents of a request or a file; those become an absl::Status.
#ifndef LIVEKV_COMMON_LOGGING_H_
#define LIVEKV_COMMON_LOGGING_H_

#include <glog/logging.h>

#include "absl/status/status.h"

namespace livekv {

// Initialises logging for a binary: stderr output, program name from argv0. Call once at the top of main().
void InitLogging(const char* argv0);

}  // namespace livekv

// Crashes with the status text when `expr` is not OK. For invariants only.
#define LIVEKV_CHECK_OK(expr)                                          \
  do {                                                                 \
    const ::absl::Status livekv_check_status_ = (expr);                \
    CHECK(livekv_check_status_.ok()) << livekv_check_status_.ToString(); \
  } while (0)

#endif  // LIVEKV_COMMON_LOGGING_H_
