#include "services/channels/channel_factory.h"

#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "services/channels/shm_kv_channel.h"
#include "services/channels/ucx_kv_channel.h"
#include "services/common/convert.h"

namespace livekv {
namespace {

std::unique_ptr<KvChannel> WithGrpcFallback(std::unique_ptr<KvChannel> primary, KvStoreClient* store,
                                            const std::string& session_id, const StoreLease& lease, int64_t version) {
  return std::make_unique<FallbackKvChannel>(std::move(primary),
                                             std::make_unique<GrpcKvChannel>(store, session_id, lease, version));
}

// A channel opened on its first Fetch: the UCX channel behind a shared-memory one costs an endpoint only when
// shared memory fails. An open that fails is UNAVAILABLE (so the next fallback takes over).
class OpenOnFirstFetch : public KvChannel {
 public:
  using Opener = std::function<absl::StatusOr<std::unique_ptr<KvChannel>>()>;
  OpenOnFirstFetch(std::string name, Opener open) : name_(std::move(name)), open_(std::move(open)) {}
  std::string name() const override { return name_; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override {
    if (channel_ == nullptr) {
      absl::StatusOr<std::unique_ptr<KvChannel>> opened = open_();
      if (!opened.ok()) {
        return absl::UnavailableError(absl::StrCat("opening the ", name_, " channel: ", opened.status().message()));
      }
      channel_ = std::move(*opened);
    }
    return channel_->Fetch(blocks, bytes_out);
  }

 private:
  const std::string name_;
  const Opener open_;
  std::unique_ptr<KvChannel> channel_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvChannel>> OpenKvChannel(KvStoreClient* store, const std::string& session_id,
                                                         const StoreLease& lease, int64_t version,
                                                         const ChannelPreference& preference) {
  const std::string& force = preference.force;
  if (force != "" && force != "shm" && force != "ucx" && force != "grpc") {
    return absl::InvalidArgumentError(
        absl::StrCat("channel \"", force, "\" is not one of \"\" (the fastest), shm, ucx, grpc"));
  }
  if (force == "grpc") return std::make_unique<GrpcKvChannel>(store, session_id, lease, version);
  const bool want_shm = force.empty() || force == "shm";
  const bool want_ucx = force.empty() || force == "ucx";
  std::vector<v1::ChannelKind> want;
  if (want_shm) want.push_back(v1::CHANNEL_KIND_SHM);
  if (want_ucx) want.push_back(v1::CHANNEL_KIND_UCX);

  absl::StatusOr<v1::OpenChannelResponse> offer = store->OpenChannel(session_id, lease, want);
  if (!offer.ok()) {
    if (offer.status().code() != absl::StatusCode::kUnimplemented) return offer.status();
    if (!force.empty()) {
      return absl::UnavailableError(absl::StrCat(force, " channel: the store offers no channels (",
                                                 offer.status().message(), ")"));
    }
    return std::make_unique<GrpcKvChannel>(store, session_id, lease, version);
  }
  LIVEKV_ASSIGN_OR_RETURN(KvGeometry geometry, FromProto(offer->geometry()));
  std::vector<std::string> why_not;
  if (want_shm) {
    if (offer->has_shm()) {
      ShmKvChannel::Options o;
      o.populate = preference.populate_mappings;
      absl::StatusOr<std::unique_ptr<ShmKvChannel>> ch =
          ShmKvChannel::Open(store, session_id, lease, version, offer->shm(), geometry.layout, o);
      if (ch.ok()) {
        if (!force.empty() || !offer->has_ucx()) {
          return WithGrpcFallback(std::move(*ch), store, session_id, lease, version);
        }
        // shm, then UCX (opened only if shm fails), then gRPC.
        UcxKvChannel::Options uo;
        uo.timeout = preference.ucx_timeout;
        auto open_ucx = [store, session_id, lease, version, ucx = offer->ucx(), layout = geometry.layout,
                         uo]() -> absl::StatusOr<std::unique_ptr<KvChannel>> {
          LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<UcxKvChannel> u,
                                  UcxKvChannel::Open(store, session_id, lease, version, ucx, layout, uo));
          return std::unique_ptr<KvChannel>(std::move(u));
        };
        return std::make_unique<FallbackKvChannel>(
            std::move(*ch), WithGrpcFallback(std::make_unique<OpenOnFirstFetch>("ucx", std::move(open_ucx)), store,
                                             session_id, lease, version));
      }
      why_not.push_back(absl::StrCat("shm: ", ch.status().message()));
    } else {
      why_not.push_back(absl::StrCat("shm: ", offer->shm_unavailable()));
    }
  }
  if (want_ucx) {
    if (offer->has_ucx()) {
      UcxKvChannel::Options o;
      o.timeout = preference.ucx_timeout;
      absl::StatusOr<std::unique_ptr<UcxKvChannel>> ch =
          UcxKvChannel::Open(store, session_id, lease, version, offer->ucx(), geometry.layout, o);
      if (ch.ok()) return WithGrpcFallback(std::move(*ch), store, session_id, lease, version);
      why_not.push_back(absl::StrCat("ucx: ", ch.status().message()));
    } else {
      why_not.push_back(absl::StrCat("ucx: ", offer->ucx_unavailable()));
    }
  }
  const std::string reasons = absl::StrJoin(why_not, "; ");
  if (!force.empty()) return absl::UnavailableError(absl::StrCat("cannot open the ", force, " channel: ", reasons));
  LOG(INFO) << "KV channel for session " << session_id << ": gRPC (" << reasons << ")";
  return std::make_unique<GrpcKvChannel>(store, session_id, lease, version);
}

}  // namespace livekv
