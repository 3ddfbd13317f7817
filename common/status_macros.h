// File: common/status_macros.h
//
// The one pair of error-propagation macros used across livekv (Abseil 20220623 has neither
// ABSL_RETURN_IF_ERROR nor ABSL_ASSIGN_OR_RETURN; delete these when Abseil is upgraded).
//
//   LIVEKV_RETURN_IF_ERROR(file.Read(&buf));
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir));
#ifndef LIVEKV_COMMON_STATUS_MACROS_H_
#define LIVEKV_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LIVEKV_STATUS_CONCAT_INNER_(a, b) a##b
#define LIVEKV_STATUS_CONCAT_(a, b) LIVEKV_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) once; returns it from the enclosing function if it is not OK.
#define LIVEKV_RETURN_IF_ERROR(expr)                                 \
  do {                                                               \
    ::absl::Status livekv_status_ = (expr);                          \
    if (!livekv_status_.ok()) return livekv_status_;                 \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>) once; on error returns its status, otherwise move-assigns the
// value to `lhs`, which may be a declaration ("auto x") or an existing variable.
#define LIVEKV_ASSIGN_OR_RETURN(lhs, rexpr) \
  LIVEKV_ASSIGN_OR_RETURN_IMPL_(LIVEKV_STATUS_CONCAT_(livekv_statusor_, __LINE__), lhs, rexpr)

#define LIVEKV_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // LIVEKV_COMMON_STATUS_MACROS_H_
