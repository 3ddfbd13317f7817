// File: services/common/session_policy.h
//
// Whether a stored session can be served by a model, and the session's policy.
#ifndef LIVEKV_SERVICES_COMMON_SESSION_POLICY_H_
#define LIVEKV_SERVICES_COMMON_SESSION_POLICY_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "kvcache/policy_options.h"
#include "proto/livekv/v1/kvstore.pb.h"

namespace livekv {

// The session's policy, if `config` (named `model_name`) can serve it. FAILED_PRECONDITION naming what differs
// (the model name, the KV geometry, or a policy the model cannot run).
absl::StatusOr<PolicyOptions> SessionPolicy(const v1::Session& session, const ModelConfig& config,
                                            const std::string& model_name);

}  // namespace livekv

#endif  // LIVEKV_SERVICES_COMMON_SESSION_POLICY_H_
