#include "services/channels/kv_channel.h"

#include <map>

#include "common/logging.h"
#include "common/status_macros.h"

namespace livekv {

GrpcKvChannel::GrpcKvChannel(KvStoreClient* store, std::string session_id, StoreLease lease, int64_t version)
    : store_(store), session_id_(std::move(session_id)), lease_(std::move(lease)), version_(version) {}

absl::Status GrpcKvChannel::Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) {
  // One Recall for all blocks, grouped by (layer, head) in the order given.
  std::vector<KvStoreClient::BlockRequest> requests;
  std::vector<absl::Span<uint8_t>> destinations;
  for (const BlockDestination& b : blocks) {
    if (requests.empty() || requests.back().layer != b.layer || requests.back().kv_head != b.kv_head) {
      requests.push_back({b.layer, b.kv_head, {}});
    }
    requests.back().blocks.push_back(b.block);
    destinations.push_back(b.destination);
  }
  return store_->RecallInto(session_id_, lease_, version_, requests, destinations, bytes_out);
}

FallbackKvChannel::FallbackKvChannel(std::unique_ptr<KvChannel> primary, std::unique_ptr<KvChannel> fallback)
    : primary_(std::move(primary)), fallback_(std::move(fallback)) {}

std::string FallbackKvChannel::name() const {
  return primary_ != nullptr ? primary_->name() : fallback_->name();
}

absl::Status FallbackKvChannel::Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) {
  if (primary_ != nullptr) {
    absl::Status s = primary_->Fetch(blocks, bytes_out);
    if (s.code() != absl::StatusCode::kUnavailable) return s;
    LOG(WARNING) << "KV channel " << primary_->name() << " failed (" << s << "); falling back to "
                 << fallback_->name();
    primary_.reset();
  }
  return fallback_->Fetch(blocks, bytes_out);
}

}  // namespace livekv
