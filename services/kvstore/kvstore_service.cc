#include "services/kvstore/kvstore_service.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/rpc/status.h"
#include "common/status_macros.h"
#include "services/common/convert.h"

namespace livekv {
namespace {

// The store's domain types as messages (kvstore.proto is this adapter's edge).

int64_t UnixMillisOrZero(absl::Time t) { return t == absl::InfiniteFuture() ? 0 : absl::ToUnixMillis(t); }

v1::Session ToProto(const SessionInfo& s) {
  v1::Session p;
  p.set_session_id(s.session_id);
  p.set_tenant(s.tenant);
  p.set_model(s.model);
  *p.mutable_geometry() = ToProto(s.geometry);
  *p.mutable_policy() = ToProto(s.policy);
  p.set_num_tokens(s.num_tokens);
  p.set_version(s.version);
  p.set_bytes(s.bytes);
  p.set_created_unix_ms(absl::ToUnixMillis(s.created));
  p.set_expires_unix_ms(UnixMillisOrZero(s.expires));
  p.set_append_open(s.append_open);
  return p;
}

v1::Lease ToProto(const LeaseInfo& l) {
  v1::Lease p;
  p.set_lease_id(l.lease_id);
  p.set_session_id(l.session_id);
  p.set_expires_unix_ms(absl::ToUnixMillis(l.expires));
  return p;
}

void ToProto(const HeadIndexData& h, v1::HeadIndex* p) {
  p->set_layer(h.layer);
  p->set_kv_head(h.kv_head);
  p->set_sink_count(h.sink_count);
  p->mutable_cluster_sizes()->Add(h.cluster_sizes.begin(), h.cluster_sizes.end());
  p->mutable_centroids()->Add(h.centroids.begin(), h.centroids.end());
  p->mutable_cluster_positions()->Add(h.cluster_positions.begin(), h.cluster_positions.end());
  p->mutable_page_first_positions()->Add(h.page_first_positions.begin(), h.page_first_positions.end());
  p->mutable_page_counts()->Add(h.page_counts.begin(), h.page_counts.end());
  p->mutable_page_hi()->Add(h.page_hi.begin(), h.page_hi.end());
  p->mutable_page_lo()->Add(h.page_lo.begin(), h.page_lo.end());
}

absl::Duration Millis(int64_t ms) { return absl::Milliseconds(ms); }

}  // namespace

KvStoreService::KvStoreService(SessionStore* store, ServiceMetrics* metrics, const Options& options)
    : store_(store), metrics_(metrics), options_(options) {
  if (metrics_ == nullptr) return;
  sessions_ = &metrics_->Gauge("livekv_sessions", "Live sessions in the KV store");
  leases_ = &metrics_->Gauge("livekv_leases", "Live leases on KV-store sessions");
  open_appends_ = &metrics_->Gauge("livekv_open_appends", "Appends begun and not yet committed or aborted");
  pool_bytes_used_ = &metrics_->Gauge("livekv_pool_bytes_used", "Bytes of the KV pools' pages in use");
  cold_bytes_ = &metrics_->Gauge("livekv_cold_bytes", "Bytes of cluster runs in the KV store's cold tier");
  prefetched_runs_ = &metrics_->Gauge("livekv_prefetched_runs", "Cluster runs promoted ahead of requests, since start");
  prefetch_hits_ = &metrics_->Gauge("livekv_prefetch_hits", "Cold runs prefetched before a request asked for them");
  prefetch_misses_ = &metrics_->Gauge("livekv_prefetch_misses", "Cold runs a request found cold (promoted on demand)");
  prefetch_hit_rate_ = &metrics_->Gauge("livekv_prefetch_hit_rate", "prefetch hits / (hits + misses); 0 before any");
  recall_bytes_ = &metrics_->Counter("livekv_recall_bytes_total", "KV bytes served by Recall");
  recall_seconds_ = &metrics_->Histogram("livekv_recall_seconds", "Time to serve a Recall, first byte to last",
                                         ServiceMetrics::LatencyBuckets());
}

grpc::Status KvStoreService::Done(const char* method, Start start, const absl::Status& status) {
  if (metrics_ != nullptr) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    metrics_->RecordRpc(method, static_cast<int>(status.code()), seconds);
    const StoreStats st = store_->Stats();
    sessions_->Set(static_cast<double>(st.sessions));
    leases_->Set(static_cast<double>(st.leases));
    open_appends_->Set(static_cast<double>(st.open_appends));
    pool_bytes_used_->Set(static_cast<double>(st.pool_used_bytes));
    cold_bytes_->Set(static_cast<double>(st.cold_bytes));
    prefetched_runs_->Set(static_cast<double>(st.prefetched_runs));
    prefetch_hits_->Set(static_cast<double>(st.prefetch_hits));
    prefetch_misses_->Set(static_cast<double>(st.prefetch_misses));
    const int64_t demanded = st.prefetch_hits + st.prefetch_misses;
    prefetch_hit_rate_->Set(demanded > 0 ? static_cast<double>(st.prefetch_hits) / static_cast<double>(demanded) : 0);
  }
  return ToGrpcStatus(status);
}

grpc::Status KvStoreService::CreateSession(grpc::ServerContext*, const v1::CreateSessionRequest* request,
                                           v1::Session* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::Status status = [&]() -> absl::Status {
    LIVEKV_ASSIGN_OR_RETURN(KvGeometry geometry, FromProto(request->geometry()));
    NewSession ns;
    LIVEKV_ASSIGN_OR_RETURN(ns.policy, FromProto(request->policy(), geometry.layout.dtype, geometry.sink_tokens,
                                                 geometry.layout.page_tokens));
    if (request->ttl_seconds() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("ttl_seconds must be >= 0, saw ", request->ttl_seconds()));
    }
    ns.tenant = request->tenant();
    ns.session_id = request->session_id();
    ns.model = request->model();
    ns.geometry = geometry;
    ns.ttl = absl::Seconds(request->ttl_seconds());
    LIVEKV_ASSIGN_OR_RETURN(SessionInfo info, store_->CreateSession(ns));
    *response = ToProto(info);
    return absl::OkStatus();
  }();
  return Done("CreateSession", start, status);
}

grpc::Status KvStoreService::GetSession(grpc::ServerContext*, const v1::GetSessionRequest* request,
                                        v1::Session* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::StatusOr<SessionInfo> info = store_->GetSession(request->session_id());
  if (info.ok()) *response = ToProto(*info);
  return Done("GetSession", start, info.status());
}

grpc::Status KvStoreService::ListSessions(grpc::ServerContext*, const v1::ListSessionsRequest* request,
                                          v1::ListSessionsResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  for (const SessionInfo& s : store_->ListSessions(request->tenant())) *response->add_sessions() = ToProto(s);
  absl::Status status;
  if (response->ByteSizeLong() > options_.max_response_bytes) {
    status = absl::ResourceExhaustedError(absl::StrCat("the session list is ", response->ByteSizeLong(),
                                                       " bytes, over the ", options_.max_response_bytes,
                                                       "-byte response limit; list one tenant"));
    response->Clear();
  }
  return Done("ListSessions", start, status);
}

grpc::Status KvStoreService::DeleteSession(grpc::ServerContext*, const v1::DeleteSessionRequest* request,
                                           v1::DeleteSessionResponse*) {
  const Start start = std::chrono::steady_clock::now();
  return Done("DeleteSession", start, store_->DeleteSession(request->session_id()));
}

grpc::Status KvStoreService::BeginAppend(grpc::ServerContext*, const v1::BeginAppendRequest* request,
                                         v1::BeginAppendResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::Status status;
  if (request->timeout_ms() < 0) {
    status = absl::InvalidArgumentError(absl::StrCat("timeout_ms must be >= 0, saw ", request->timeout_ms()));
  } else {
    absl::StatusOr<AppendTicket> t = store_->BeginAppend(request->session_id(), request->expected_tokens(),
                                                         request->num_tokens(), Millis(request->timeout_ms()));
    status = t.status();
    if (t.ok()) {
      response->set_append_id(t->append_id);
      response->set_deadline_unix_ms(absl::ToUnixMillis(t->deadline));
    }
  }
  return Done("BeginAppend", start, status);
}

absl::Status KvStoreService::DoAppendKv(grpc::ServerContext* context,
                                        grpc::ServerReader<v1::AppendKvRequest>* reader,
                                        v1::AppendKvResponse* response) {
  std::string append_id;
  v1::AppendKvRequest message;
  absl::Status status;
  int64_t index = 0;
  bool owned = false;      // the stream opened the append: it must end with a commit
  bool committed = false;
  while (status.ok() && reader->Read(&message)) {
    if (committed) {
      status = absl::InvalidArgumentError(absl::StrCat("AppendKv message ", index, " follows the commit"));
      break;
    }
    if (append_id.empty()) {
      if (message.has_begin()) {
        absl::StatusOr<AppendTicket> ticket = store_->BeginAppend(
            message.begin().session_id(), message.begin().expected_tokens(), message.begin().num_tokens(),
            message.begin().timeout_ms() > 0 ? absl::Milliseconds(message.begin().timeout_ms())
                                             : absl::ZeroDuration());
        if (!ticket.ok()) return ticket.status();
        append_id = ticket->append_id;
        owned = true;
        response->set_append_id(append_id);
        ++index;
        continue;
      }
      if (message.append_id().empty()) {
        return absl::InvalidArgumentError("append_id is required on the first AppendKv message");
      }
      append_id = message.append_id();
    } else if (message.has_begin()) {
      status = absl::InvalidArgumentError(absl::StrCat("begin: only the first AppendKv message may open an append",
                                                       " (message ", index, ")"));
      break;
    } else if (!message.append_id().empty() && message.append_id() != append_id) {
      status = absl::InvalidArgumentError(absl::StrCat("append_id: message ", index, " names append \"",
                                                       message.append_id(), "\"; the stream is for \"", append_id,
                                                       "\""));
      break;
    }
    const size_t size = message.ByteSizeLong();
    if (size > options_.max_append_message_bytes) {
      const char* field = message.has_rows() ? "rows" : message.has_clustering() ? "clustering" : "payload";
      status = absl::InvalidArgumentError(absl::StrCat(field, ": AppendKv message ", index, " is ", size,
                                                       " bytes; at most ", options_.max_append_message_bytes,
                                                       " are accepted (send rows in smaller pieces)"));
      break;
    }
    absl::StatusOr<int64_t> received;
    switch (message.payload_case()) {
      case v1::AppendKvRequest::kRows: {
        v1::LayerRows* rows = message.mutable_rows();
        received = store_->StageRows(append_id, rows->layer(), rows->row_offset(), rows->rows(),
                                     std::move(*rows->mutable_keys()), std::move(*rows->mutable_values()));
        break;
      }
      case v1::AppendKvRequest::kClustering: {
        absl::StatusOr<HeadClustering> c = FromProto(message.clustering());
        received = c.ok() ? store_->StageClustering(append_id, std::move(*c)) : c.status();
        break;
      }
      case v1::AppendKvRequest::kDropPages:
        received = store_->StageDropPages(append_id, message.drop_pages());
        break;
      case v1::AppendKvRequest::kCommit: {
        absl::StatusOr<SessionInfo> info = store_->CommitAppend(append_id);
        if (info.ok()) {
          *response->mutable_session() = ToProto(*info);
          committed = true;
          received = response->rows_received();
        } else {
          received = info.status();
        }
        break;
      }
      case v1::AppendKvRequest::kBegin:
        received = absl::InternalError("begin handled above");
        break;
      case v1::AppendKvRequest::PAYLOAD_NOT_SET:
        received = absl::InvalidArgumentError(
            absl::StrCat("payload: AppendKv message ", index, " carries no rows, clustering or drop_pages"));
        break;
    }
    status = received.status();
    if (received.ok()) response->set_rows_received(*received);
    ++index;
  }
  // Read() also returns false when the stream breaks; only a half-close by the client is a clean end, and for an
  // append the stream opened itself, only after its commit.
  if (status.ok() && owned && !committed) {
    status = absl::AbortedError(absl::StrCat("the AppendKv stream that opened append \"", append_id,
                                             "\" ended without a commit; the append is abandoned"));
  }
  if (status.ok() && !committed && context->IsCancelled()) {
    status = absl::CancelledError(absl::StrCat("the AppendKv stream of append \"", append_id,
                                               "\" broke (cancelled, past its deadline, or the peer went away)"));
  }
  if (!status.ok() && !append_id.empty() && status.code() != absl::StatusCode::kNotFound &&
      status.code() != absl::StatusCode::kDeadlineExceeded) {  // those appends are gone already
    (void)store_->AbortAppend(append_id);
  }
  return status;
}

grpc::Status KvStoreService::AppendKv(grpc::ServerContext* context, grpc::ServerReader<v1::AppendKvRequest>* reader,
                                      v1::AppendKvResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  return Done("AppendKv", start, DoAppendKv(context, reader, response));
}

grpc::Status KvStoreService::CommitAppend(grpc::ServerContext*, const v1::CommitAppendRequest* request,
                                          v1::CommitAppendResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::StatusOr<SessionInfo> info = store_->CommitAppend(request->append_id());
  if (info.ok()) *response->mutable_session() = ToProto(*info);
  return Done("CommitAppend", start, info.status());
}

grpc::Status KvStoreService::AbortAppend(grpc::ServerContext*, const v1::AbortAppendRequest* request,
                                         v1::AbortAppendResponse*) {
  const Start start = std::chrono::steady_clock::now();
  return Done("AbortAppend", start, store_->AbortAppend(request->append_id()));
}

grpc::Status KvStoreService::GetIndex(grpc::ServerContext*, const v1::GetIndexRequest* request,
                                      v1::GetIndexResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::Status status = [&]() -> absl::Status {
    const std::vector<int32_t> layers(request->layers().begin(), request->layers().end());
    LIVEKV_ASSIGN_OR_RETURN(SessionIndex index, store_->GetIndex(request->session_id(), layers,
                                                                 request->with_positions()));
    response->set_version(index.version);
    response->set_num_tokens(index.num_tokens);
    *response->mutable_geometry() = ToProto(index.geometry);
    response->mutable_heads()->Reserve(static_cast<int>(index.heads.size()));
    for (const HeadIndexData& h : index.heads) ToProto(h, response->add_heads());
    const size_t size = response->ByteSizeLong();
    if (size > options_.max_response_bytes) {
      response->Clear();
      return absl::ResourceExhaustedError(absl::StrCat("layers: the index of ", layers.empty() ? "all" : "these",
                                                       " layers is ", size, " bytes, over the ",
                                                       options_.max_response_bytes,
                                                       "-byte response limit; ask for fewer layers"));
    }
    return absl::OkStatus();
  }();
  return Done("GetIndex", start, status);
}

absl::Status KvStoreService::DoRecall(grpc::ServerContext* context, const v1::RecallRequest& request,
                                      grpc::ServerWriter<v1::RecallChunk>* writer) {
  std::vector<BlockList> blocks;
  blocks.reserve(request.blocks_size());
  for (const v1::BlockSet& set : request.blocks()) blocks.push_back({set.layer(), set.kv_head(), FromProto(set)});
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<RecallReader> reader,
                          store_->StartRecall(request.session_id(), request.lease_id(), request.version(), blocks));
  v1::RecallChunk chunk;
  chunk.set_total_bytes(reader->total_bytes());
  do {
    if (context->IsCancelled()) return absl::CancelledError("the Recall was cancelled");
    chunk.set_offset(reader->offset());
    LIVEKV_RETURN_IF_ERROR(reader->Next(options_.recall_chunk_bytes, chunk.mutable_data()));
    if (!writer->Write(chunk)) {
      return absl::CancelledError(absl::StrCat("the Recall stream broke after ", reader->offset(), " of ",
                                               reader->total_bytes(), " bytes"));
    }
    if (recall_bytes_ != nullptr) recall_bytes_->Increment(static_cast<double>(chunk.data().size()));
  } while (!reader->done());
  return absl::OkStatus();
}

grpc::Status KvStoreService::Recall(grpc::ServerContext* context, const v1::RecallRequest* request,
                                    grpc::ServerWriter<v1::RecallChunk>* writer) {
  const Start start = std::chrono::steady_clock::now();
  const absl::Status status = DoRecall(context, *request, writer);
  if (recall_seconds_ != nullptr && status.ok()) {
    recall_seconds_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return Done("Recall", start, status);
}

grpc::Status KvStoreService::AcquireLease(grpc::ServerContext*, const v1::AcquireLeaseRequest* request,
                                          v1::Lease* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::StatusOr<LeaseInfo> lease = request->ttl_ms() < 0
                                        ? absl::InvalidArgumentError(absl::StrCat("ttl_ms must be >= 0, saw ",
                                                                                  request->ttl_ms()))
                                        : store_->AcquireLease(request->session_id(), Millis(request->ttl_ms()),
                                                               request->holder());
  if (lease.ok()) *response = ToProto(*lease);
  return Done("AcquireLease", start, lease.status());
}

grpc::Status KvStoreService::RenewLease(grpc::ServerContext*, const v1::RenewLeaseRequest* request,
                                        v1::Lease* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::StatusOr<LeaseInfo> lease =
      request->ttl_ms() < 0
          ? absl::InvalidArgumentError(absl::StrCat("ttl_ms must be >= 0, saw ", request->ttl_ms()))
          : store_->RenewLease(request->lease_id(), Millis(request->ttl_ms()));
  if (lease.ok()) *response = ToProto(*lease);
  return Done("RenewLease", start, lease.status());
}

grpc::Status KvStoreService::ReleaseLease(grpc::ServerContext*, const v1::ReleaseLeaseRequest* request,
                                          v1::ReleaseLeaseResponse*) {
  const Start start = std::chrono::steady_clock::now();
  return Done("ReleaseLease", start, store_->ReleaseLease(request->lease_id()));
}

grpc::Status KvStoreService::Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  const StoreStats st = store_->Stats();
  response->set_sessions(st.sessions);
  response->set_leases(st.leases);
  response->set_open_appends(st.open_appends);
  response->set_pool_capacity_bytes(st.pool_capacity_bytes);
  response->set_pool_used_bytes(st.pool_used_bytes);
  response->set_recall_bytes(st.recall_bytes);
  response->set_expired_sessions(st.expired_sessions);
  response->set_expired_leases(st.expired_leases);
  response->set_aborted_appends(st.aborted_appends);
  response->set_pinned_runs(st.pinned_runs);
  response->set_pinned_bytes(st.pinned_bytes);
  response->set_resolved_blocks(st.resolved_blocks);
  response->set_cold_runs(st.cold_runs);
  response->set_cold_bytes(st.cold_bytes);
  response->set_demoted_runs(st.demoted_runs);
  response->set_prefetched_runs(st.prefetched_runs);
  response->set_prefetch_hits(st.prefetch_hits);
  response->set_prefetch_misses(st.prefetch_misses);
  return Done("Stats", start, absl::OkStatus());
}

grpc::Status KvStoreService::OpenChannel(grpc::ServerContext*, const v1::OpenChannelRequest* request,
                                         v1::OpenChannelResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  absl::Status status = [&]() -> absl::Status {
    bool want_shm = request->want().empty(), want_ucx = request->want().empty();
    for (int i = 0; i < request->want_size(); ++i) {
      switch (request->want(i)) {
        case v1::CHANNEL_KIND_SHM:
          want_shm = true;
          break;
        case v1::CHANNEL_KIND_UCX:
          want_ucx = true;
          break;
        default:
          return absl::InvalidArgumentError(absl::StrCat("want[", i, "]: ", request->want(i),
                                                         " is not a channel kind (shm = 1, ucx = 2)"));
      }
    }
    LIVEKV_ASSIGN_OR_RETURN(SessionInfo info, store_->GetSession(request->session_id()));
    LIVEKV_ASSIGN_OR_RETURN(PoolView pool, store_->SessionPool(request->session_id(), request->lease_id()));
    *response->mutable_geometry() = ToProto(info.geometry);
    if (options_.data_plane != nullptr) {
      options_.data_plane->Offer(pool, want_shm, want_ucx, response);
    } else {
      if (want_shm) response->set_shm_unavailable("the store runs without a data plane");
      if (want_ucx) response->set_ucx_unavailable("the store runs without a data plane");
    }
    return absl::OkStatus();
  }();
  return Done("OpenChannel", start, status);
}

grpc::Status KvStoreService::ResolveBlocks(grpc::ServerContext*, const v1::ResolveBlocksRequest* request,
                                           v1::ResolveBlocksResponse* response) {
  const Start start = std::chrono::steady_clock::now();
  std::vector<BlockList> blocks;
  blocks.reserve(request->blocks_size());
  for (const v1::BlockSet& set : request->blocks()) blocks.push_back({set.layer(), set.kv_head(), FromProto(set)});
  absl::StatusOr<std::vector<BlockLocation>> locations =
      store_->ResolveBlocks(request->session_id(), request->lease_id(), request->version(), blocks);
  if (locations.ok()) {
    response->mutable_locations()->Reserve(static_cast<int>(locations->size()));
    for (const BlockLocation& l : *locations) {
      v1::BlockLocation* p = response->add_locations();
      p->set_pool_id(l.pool_id);
      p->set_first_page(l.first_page);
      p->set_num_pages(l.num_pages);
      p->set_tokens(l.tokens);
      p->set_generation(l.generation);
    }
  }
  return Done("ResolveBlocks", start, locations.status());
}

}  // namespace livekv
