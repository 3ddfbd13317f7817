// File: common/rpc/status.h
//
// The one place absl::Status and grpc::Status meet. The canonical codes line up numerically; messages pass
// through unchanged.
#ifndef LIVEKV_COMMON_RPC_STATUS_H_
#define LIVEKV_COMMON_RPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace livekv {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace livekv

#endif  // LIVEKV_COMMON_RPC_STATUS_H_
