#include "services/kvstore/kvstore_client.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/rpc/client.h"
#include "common/rpc/status.h"
#include "common/status_macros.h"
#include "services/common/convert.h"

namespace livekv {
namespace {

// AppendKv messages stay below this (the server accepts up to 16 MiB).
constexpr size_t kAppendMessageBytes = size_t{4} << 20;

// Adds `requests` to a ResolveBlocks or Recall request as block sets, in the order given (so locations and recalled
// bytes follow the blocks of `requests`); returns the number of blocks.
template <typename Request>
size_t AddBlockSets(const std::vector<KvStoreClient::BlockRequest>& requests, Request* request) {
  size_t blocks = 0;
  for (const KvStoreClient::BlockRequest& r : requests) {
    for (v1::BlockSet& set : ToBlockSets(r.layer, r.kv_head, r.blocks)) *request->add_blocks() = std::move(set);
    blocks += r.blocks.size();
  }
  return blocks;
}

}  // namespace

KvStoreClient::KvStoreClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(v1::KvStore::NewStub(channel)), timeout_(timeout) {}

absl::StatusOr<v1::Session> KvStoreClient::CreateSession(const v1::CreateSessionRequest& request) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::Session session;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->CreateSession(&context, request, &session)));
  return session;
}

absl::StatusOr<v1::Session> KvStoreClient::GetSession(const std::string& session_id) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::Session session;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetSession(&context, request, &session)));
  return session;
}

absl::Status KvStoreClient::DeleteSession(const std::string& session_id) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(&context, request, &response));
}

absl::StatusOr<StoreLease> KvStoreClient::AcquireLease(const std::string& session_id, absl::Duration ttl,
                                                       const std::string& holder) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::AcquireLeaseRequest request;
  request.set_session_id(session_id);
  request.set_ttl_ms(absl::ToInt64Milliseconds(ttl));
  request.set_holder(holder);
  v1::Lease lease;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->AcquireLease(&context, request, &lease)));
  return StoreLease{lease.lease_id(), lease.session_id()};
}

absl::Status KvStoreClient::ReleaseLease(const StoreLease& lease) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::ReleaseLeaseRequest request;
  request.set_lease_id(lease.lease_id);
  v1::ReleaseLeaseResponse response;
  return FromGrpcStatus(stub_->ReleaseLease(&context, request, &response));
}

absl::Status KvStoreClient::RenewLease(const StoreLease& lease, absl::Duration ttl) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::RenewLeaseRequest request;
  request.set_lease_id(lease.lease_id);
  request.set_ttl_ms(absl::ToInt64Milliseconds(ttl));
  v1::Lease response;
  return FromGrpcStatus(stub_->RenewLease(&context, request, &response));
}

absl::StatusOr<v1::StatsResponse> KvStoreClient::Stats() {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::StatsRequest request;
  v1::StatsResponse response;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->Stats(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::OpenChannelResponse> KvStoreClient::OpenChannel(const std::string& session_id,
                                                                   const StoreLease& lease,
                                                                   const std::vector<v1::ChannelKind>& want) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::OpenChannelRequest request;
  request.set_session_id(session_id);
  request.set_lease_id(lease.lease_id);
  for (v1::ChannelKind k : want) request.add_want(k);
  v1::OpenChannelResponse response;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->OpenChannel(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::ResolveBlocksResponse> KvStoreClient::ResolveBlocks(const std::string& session_id,
                                                                       const StoreLease& lease, int64_t version,
                                                                       const std::vector<BlockRequest>& requests) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::ResolveBlocksRequest request;
  request.set_session_id(session_id);
  request.set_lease_id(lease.lease_id);
  request.set_version(version);
  const size_t blocks = AddBlockSets(requests, &request);
  v1::ResolveBlocksResponse response;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->ResolveBlocks(&context, request, &response)));
  if (static_cast<size_t>(response.locations_size()) != blocks) {
    return absl::InternalError(absl::StrCat("ResolveBlocks answered ", response.locations_size(),
                                            " locations for ", blocks, " blocks"));
  }
  return response;
}

absl::StatusOr<v1::GetIndexResponse> KvStoreClient::GetIndex(const std::string& session_id,
                                                             const std::vector<int32_t>& layers) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::GetIndexRequest request;
  request.set_session_id(session_id);
  request.mutable_layers()->Add(layers.begin(), layers.end());
  request.set_with_positions(true);
  v1::GetIndexResponse response;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetIndex(&context, request, &response)));
  return response;
}

absl::StatusOr<KvStoreClient::Mirror> KvStoreClient::LoadMirror(const std::string& session_id,
                                                                const StoreLease& lease, PagePool* pool,
                                                                bool with_bytes) {
  absl::StatusOr<v1::GetIndexResponse> whole = GetIndex(session_id, {});
  v1::GetIndexResponse index;
  if (whole.ok()) {
    index = std::move(*whole);
  } else if (whole.status().code() == absl::StatusCode::kResourceExhausted) {
    // Too large for one message: one layer at a time, all of one version.
    LIVEKV_ASSIGN_OR_RETURN(index, GetIndex(session_id, {0}));
    for (int32_t l = 1; l < index.geometry().num_layers(); ++l) {
      LIVEKV_ASSIGN_OR_RETURN(v1::GetIndexResponse part, GetIndex(session_id, {l}));
      if (part.version() != index.version()) {
        return absl::AbortedError(absl::StrCat("session \"", session_id, "\" changed (version ", index.version(),
                                               " to ", part.version(), ") while its index was read; retry"));
      }
      for (v1::HeadIndex& h : *part.mutable_heads()) *index.add_heads() = std::move(h);
    }
  } else {
    return whole.status();
  }

  Mirror mirror;
  LIVEKV_ASSIGN_OR_RETURN(mirror.geometry, FromProto(index.geometry()));
  mirror.version = index.version();
  const KvGeometry& g = mirror.geometry;
  const int64_t d = g.layout.head_dim;
  LIVEKV_ASSIGN_OR_RETURN(mirror.kv, SequenceKv::Create(g, pool));
  if (index.heads_size() != g.num_layers * g.num_kv_heads) {
    return absl::InternalError(absl::StrCat("the index of session \"", session_id, "\" has ", index.heads_size(),
                                            " heads; the geometry has ", g.num_layers * g.num_kv_heads));
  }
  for (const v1::HeadIndex& h : index.heads()) {
    const int32_t l = h.layer(), kh = h.kv_head();
    auto bad = [&](absl::string_view what) {
      return absl::InternalError(absl::StrCat("the index of session \"", session_id, "\" layer ", l, " head ", kh,
                                              " is inconsistent: ", what));
    };
    int64_t held = h.sink_count();
    if (h.centroids_size() != static_cast<int64_t>(h.cluster_sizes_size()) * d) return bad("centroids");
    if (h.page_counts_size() != h.page_first_positions_size()) return bad("page counts");
    if (h.page_hi_size() != h.page_lo_size() || h.page_hi_size() % d != 0 ||
        h.page_hi_size() / d > h.page_counts_size()) {
      return bad("page bounds");
    }
    LIVEKV_RETURN_IF_ERROR(mirror.kv->ImportSink(l, kh, h.sink_count(), nullptr));
    int64_t next_position = 0;
    for (int c = 0; c < h.cluster_sizes_size(); ++c) {
      const int32_t size = h.cluster_sizes(c);
      if (size <= 0 || next_position + size > h.cluster_positions_size()) return bad("cluster positions");
      std::vector<int32_t> positions(h.cluster_positions().begin() + next_position,
                                     h.cluster_positions().begin() + next_position + size);
      next_position += size;
      held += size;
      LIVEKV_RETURN_IF_ERROR(mirror.kv->ImportCluster(
          l, kh, std::move(positions), absl::MakeConstSpan(h.centroids().data() + c * d, d), nullptr));
    }
    if (next_position != h.cluster_positions_size()) return bad("cluster positions");
    const int64_t complete = h.page_hi_size() / d;
    for (int p = 0; p < h.page_first_positions_size(); ++p) {
      const bool bounds = p < complete;
      held += h.page_counts(p);
      LIVEKV_RETURN_IF_ERROR(mirror.kv->ImportPage(l, kh, h.page_first_positions(p), h.page_counts(p),
                                                   bounds ? h.page_hi().data() + p * d : nullptr,
                                                   bounds ? h.page_lo().data() + p * d : nullptr, nullptr));
    }
  }
  LIVEKV_RETURN_IF_ERROR(mirror.kv->FinishImport(index.num_tokens()));
  if (with_bytes) {
    std::vector<BlockRequest> requests;
    for (int32_t l = 0; l < g.num_layers; ++l) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        requests.push_back({l, h, mirror.kv->SelectedBlocks(l, h, mirror.kv->SelectAll(l, h))});
      }
    }
    LIVEKV_RETURN_IF_ERROR(Recall(session_id, lease, mirror.version, requests, mirror.kv.get(), nullptr));
  }
  return mirror;
}

absl::Status KvStoreClient::Recall(const std::string& session_id, const StoreLease& lease, int64_t version,
                                   const std::vector<BlockRequest>& requests, SequenceKv* mirror,
                                   int64_t* bytes_out) {
  std::vector<absl::Span<uint8_t>> destinations;
  for (const BlockRequest& r : requests) {
    for (const BlockRef& b : r.blocks) {
      LIVEKV_ASSIGN_OR_RETURN(absl::Span<uint8_t> span, mirror->BlockBytes(r.layer, r.kv_head, b));
      destinations.push_back(span);
    }
  }
  return RecallInto(session_id, lease, version, requests, destinations, bytes_out);
}

absl::Status KvStoreClient::RecallInto(const std::string& session_id, const StoreLease& lease, int64_t version,
                                       const std::vector<BlockRequest>& requests,
                                       const std::vector<absl::Span<uint8_t>>& destinations, int64_t* bytes_out) {
  v1::RecallRequest request;
  request.set_session_id(session_id);
  request.set_lease_id(lease.lease_id);
  request.set_version(version);
  const size_t blocks = AddBlockSets(requests, &request);
  if (blocks != destinations.size()) {
    return absl::InvalidArgumentError(absl::StrCat("recall of ", blocks, " blocks into ", destinations.size(),
                                                   " destinations"));
  }
  int64_t expected = 0;
  for (const absl::Span<uint8_t>& d : destinations) expected += static_cast<int64_t>(d.size());
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  std::unique_ptr<grpc::ClientReader<v1::RecallChunk>> reader = stub_->Recall(&context, request);
  v1::RecallChunk chunk;
  int64_t received = 0;
  size_t dest = 0;
  size_t dest_offset = 0;
  absl::Status error;
  while (reader->Read(&chunk)) {
    const int64_t size = static_cast<int64_t>(chunk.data().size());
    if (chunk.total_bytes() != expected) {
      error = absl::FailedPreconditionError(absl::StrCat("the store sends ", chunk.total_bytes(),
                                                         " bytes for the blocks; the mirror's blocks hold ", expected,
                                                         " (a mirror of another geometry?)"));
    } else if (chunk.offset() != received || received + size > expected) {
      error = absl::InternalError(absl::StrCat("Recall chunk of ", size, " bytes at offset ", chunk.offset(),
                                               " after ", received, " of ", expected, " bytes"));
    }
    if (!error.ok()) break;
    const char* src = chunk.data().data();
    for (int64_t left = size; left > 0;) {
      const size_t take = std::min<size_t>(left, destinations[dest].size() - dest_offset);
      std::memcpy(destinations[dest].data() + dest_offset, src, take);
      src += take;
      left -= static_cast<int64_t>(take);
      dest_offset += take;
      if (dest_offset == destinations[dest].size()) {
        ++dest;
        dest_offset = 0;
      }
    }
    received += size;
  }
  if (!error.ok()) context.TryCancel();
  const grpc::Status finished = reader->Finish();
  LIVEKV_RETURN_IF_ERROR(error);
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(finished));
  if (received != expected) {
    return absl::InternalError(absl::StrCat("Recall ended after ", received, " of ", expected, " bytes"));
  }
  if (bytes_out != nullptr) *bytes_out = received;
  return absl::OkStatus();
}

absl::StatusOr<v1::Session> KvStoreClient::AppendStream(const v1::BeginAppendRequest& begin, int64_t n,
                                                        const std::vector<std::string>& keys,
                                                        const std::vector<std::string>& values,
                                                        const Maintenance& maintenance) {
  // The whole append in one stream: `begin`, the rows, the maintenance, `commit`. The store ties the append to
  // the stream, so if this process dies at any point the append is abandoned at once.
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::AppendKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::AppendKvRequest>> writer = stub_->AppendKv(&context, &response);
  bool open = true;
  auto send = [&](v1::AppendKvRequest& message) {
    if (open) open = writer->Write(message);
  };
  v1::AppendKvRequest message;
  *message.mutable_begin() = begin;
  send(message);
  for (size_t layer = 0; layer < keys.size() && n > 0 && open; ++layer) {
    const size_t row_bytes = keys[layer].size() / n;  // one token's K (or V) over all KV heads
    const int64_t per_message = std::max<int64_t>(1, kAppendMessageBytes / std::max<size_t>(1, 2 * row_bytes));
    for (int64_t row = 0; row < n && open; row += per_message) {
      const int64_t rows = std::min(per_message, n - row);
      message.Clear();
      v1::LayerRows* r = message.mutable_rows();
      r->set_layer(static_cast<int32_t>(layer));
      r->set_row_offset(row);
      r->set_rows(static_cast<int32_t>(rows));
      r->set_keys(keys[layer].substr(row * row_bytes, rows * row_bytes));
      r->set_values(values[layer].substr(row * row_bytes, rows * row_bytes));
      send(message);
    }
  }
  for (const HeadClustering& c : maintenance.clusterings) {
    message.Clear();
    *message.mutable_clustering() = ToProto(c);
    send(message);
  }
  if (maintenance.drop_pages != 0) {
    message.Clear();
    message.set_drop_pages(maintenance.drop_pages);
    send(message);
  }
  message.Clear();
  message.set_commit(true);
  send(message);
  if (open) writer->WritesDone();
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  if (!response.has_session()) return absl::InternalError("the store answered the append without its session");
  return std::move(*response.mutable_session());
}

absl::StatusOr<v1::Session> KvStoreClient::Append(const std::string& session_id, int64_t expected_tokens, int64_t n,
                                                  const std::vector<std::string>& keys,
                                                  const std::vector<std::string>& values,
                                                  const Maintenance& maintenance) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("append of ", n, " tokens"));
  if (keys.size() != values.size()) {
    return absl::InvalidArgumentError(absl::StrCat("append: keys for ", keys.size(), " layers, values for ",
                                                   values.size()));
  }
  for (size_t l = 0; l < keys.size(); ++l) {
    if (keys[l].size() != values[l].size() || (n == 0 && !keys[l].empty()) || (n > 0 && keys[l].size() % n != 0)) {
      return absl::InvalidArgumentError(absl::StrCat("append: layer ", l, " has ", keys[l].size(), " key and ",
                                                     values[l].size(), " value bytes, not the same whole rows for ",
                                                     n, " tokens"));
    }
  }
  if (n > 0 && keys.empty()) return absl::InvalidArgumentError("append: no rows for a non-empty append");

  v1::BeginAppendRequest begin;
  begin.set_session_id(session_id);
  begin.set_expected_tokens(expected_tokens);
  begin.set_num_tokens(n);
  return AppendStream(begin, n, keys, values, maintenance);
}

}  // namespace livekv
