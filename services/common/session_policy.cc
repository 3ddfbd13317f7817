#include "services/common/session_policy.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/policy_kv_context.h"
#include "services/common/convert.h"

namespace livekv {

absl::StatusOr<PolicyOptions> SessionPolicy(const v1::Session& session, const ModelConfig& config,
                                            const std::string& model_name) {
  if (!session.model().empty() && !model_name.empty() && session.model() != model_name) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session.session_id(), " holds KV of model \"",
                                                      session.model(), "\"; this service runs \"", model_name, "\""));
  }
  LIVEKV_ASSIGN_OR_RETURN(KvGeometry g, FromProto(session.geometry()));
  LIVEKV_ASSIGN_OR_RETURN(PolicyOptions policy,
                          FromProto(session.policy(), g.layout.dtype, g.sink_tokens, g.layout.page_tokens));
  const KvGeometry want = GeometryFor(config, policy);
  if (want.num_layers != g.num_layers || want.num_kv_heads != g.num_kv_heads ||
      want.layout.head_dim != g.layout.head_dim) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session.session_id(), " has ", g.num_layers, " layers x ", g.num_kv_heads,
                     " KV heads of ", g.layout.head_dim, "; the model has ", want.num_layers, " x ",
                     want.num_kv_heads, " of ", want.layout.head_dim));
  }
  absl::Status valid = policy.Validate(config.num_layers);
  if (!valid.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session.session_id(), ": ", valid.message()));
  }
  return policy;
}

}  // namespace livekv
