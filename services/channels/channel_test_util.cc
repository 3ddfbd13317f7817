#include "services/channels/channel_test_util.h"

#include "services/channels/ucx.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/rpc/client.h"
#include "common/rpc/status.h"
#include "common/status_macros.h"
#include "services/common/convert.h"

namespace livekv::channel_testing {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestStore>> TestStore::Start(const TestStoreOptions& options) {
  std::unique_ptr<TestStore> t(new TestStore());
  if (options.shm) {
    LIVEKV_ASSIGN_OR_RETURN(t->arena_, ShmArena::Create({"livekvtest", options.prefault}));
  }
  SessionStore::Options so;
  so.pool_bytes = options.pool_bytes;
  so.default_lease_ttl = options.lease_ttl;
  so.cold_tier = options.cold_tier;
  so.cold_after = options.cold_after;
  t->store_ = std::make_unique<SessionStore>(so, options.clock != nullptr ? options.clock : Clock::Real(),
                                             t->arena_.get());
  DataPlane::Options po;
  po.shm = t->arena_.get();
  po.ucx = options.ucx;
  t->data_plane_ = std::make_unique<DataPlane>(po);
  if (options.ucx) LIVEKV_RETURN_IF_ERROR(t->data_plane_->ucx_status());
  t->metrics_ = std::make_unique<ServiceMetrics>("kvstore");
  KvStoreService::Options vo;
  vo.data_plane = t->data_plane_.get();
  t->service_ = std::make_unique<KvStoreService>(t->store_.get(), t->metrics_.get(), vo);
  LIVEKV_RETURN_IF_ERROR(t->server_.Start("127.0.0.1:0", {t->service_.get()}));
  std::shared_ptr<grpc::Channel> channel = MakeChannel(t->server_.address());
  t->client_ = std::make_unique<KvStoreClient>(channel, absl::Seconds(30));
  t->stub_ = v1::KvStore::NewStub(channel);
  return t;
}

TestStore::~TestStore() { server_.Shutdown(absl::ZeroDuration()); }

std::string PatternRow(const PageLayout& layout, uint64_t tag, int32_t layer, int32_t head, int64_t position,
                       bool key) {
  const size_t es = DTypeSize(layout.dtype);
  std::string row(layout.head_dim * es, '\0');
  const uint64_t base = Mix(tag * 0x9E3779B97F4A7C15ull ^ (uint64_t(layer) << 52) ^ (uint64_t(head) << 44) ^
                            (uint64_t(position) << 2) ^ (key ? 1 : 0));
  for (int32_t c = 0; c < layout.head_dim; ++c) {
    const uint64_t h = Mix(base + uint64_t(c) * 0x632BE59BD9B4E019ull);
    switch (layout.dtype) {
      case DType::kF32: {
        const uint32_t bits = 0x3F800000u | static_cast<uint32_t>(h & 0x7FFFFF);
        std::memcpy(&row[c * es], &bits, 4);
        break;
      }
      case DType::kBF16: {
        const uint16_t bits = 0x3F80u | static_cast<uint16_t>(h & 0x7F);
        std::memcpy(&row[c * es], &bits, 2);
        break;
      }
      default: {  // F16
        const uint16_t bits = 0x3C00u | static_cast<uint16_t>(h & 0x3FF);
        std::memcpy(&row[c * es], &bits, 2);
        break;
      }
    }
  }
  return row;
}

KvGeometry SmallGeometry(int32_t layers, int32_t heads, int32_t head_dim, int32_t page_tokens, DType dtype,
                         int32_t sink_tokens) {
  KvGeometry g;
  g.num_layers = layers;
  g.num_kv_heads = heads;
  g.layout.head_dim = head_dim;
  g.layout.page_tokens = page_tokens;
  g.layout.dtype = dtype;
  g.sink_tokens = sink_tokens;
  return g;
}

absl::StatusOr<SessionModel> CreatePatternSession(KvStoreClient* store, const std::string& id, const KvGeometry& g,
                                                  uint64_t tag) {
  v1::CreateSessionRequest r;
  r.set_session_id(id);
  r.set_model("pattern");
  *r.mutable_geometry() = ToProto(g);
  v1::PolicyConfig* p = r.mutable_policy();
  p->set_kind(v1::POLICY_FULL);
  p->set_budget(1 << 20);
  p->set_window(2 * g.layout.page_tokens);
  p->set_cluster_window(2 * g.layout.page_tokens);
  p->set_window_clusters(1);
  p->set_dense_layers_set(true);
  LIVEKV_ASSIGN_OR_RETURN(v1::Session s, store->CreateSession(r));
  SessionModel m;
  m.id = s.session_id();
  m.tag = tag;
  m.geometry = g;
  m.first_positional = g.sink_tokens;
  return m;
}

absl::Status AppendPattern(KvStoreClient* store, SessionModel* session, int64_t n, int32_t cluster_pages,
                           int32_t clusters, int32_t drop_pages, std::mt19937_64* rng) {
  const KvGeometry& g = session->geometry;
  const PageLayout& L = g.layout;
  std::vector<std::string> keys(g.num_layers), values(g.num_layers);
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int64_t t = 0; t < n; ++t) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        keys[l] += PatternRow(L, session->tag, l, h, session->num_tokens + t, true);
        values[l] += PatternRow(L, session->tag, l, h, session->num_tokens + t, false);
      }
    }
  }
  const int64_t after = session->num_tokens + n;
  const int64_t positional_start = std::max<int64_t>(session->first_positional, g.sink_tokens);
  const int64_t complete = std::max<int64_t>(0, after - positional_start) / L.page_tokens;
  Maintenance m;
  cluster_pages = static_cast<int32_t>(std::min<int64_t>(cluster_pages, complete));
  int64_t consumed = 0;
  if (cluster_pages > 0) {
    consumed = int64_t{cluster_pages} * L.page_tokens;
    for (int32_t l = 0; l < g.num_layers; ++l) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        std::vector<int32_t> positions(consumed);
        std::iota(positions.begin(), positions.end(), static_cast<int32_t>(positional_start));
        std::shuffle(positions.begin(), positions.end(), *rng);
        const int32_t k = std::max<int32_t>(1, std::min<int32_t>(clusters, static_cast<int32_t>(consumed)));
        // Random cut points: k non-empty clusters, each stored in position order.
        std::vector<int64_t> cuts = {0, consumed};
        std::vector<int64_t> all(consumed - 1);
        std::iota(all.begin(), all.end(), 1);
        std::shuffle(all.begin(), all.end(), *rng);
        cuts.insert(cuts.end(), all.begin(), all.begin() + (k - 1));
        std::sort(cuts.begin(), cuts.end());
        HeadClustering c;
        c.layer = l;
        c.kv_head = h;
        c.num_pages = cluster_pages;
        for (size_t i = 0; i + 1 < cuts.size(); ++i) {
          ClusterSpec spec;
          spec.positions.assign(positions.begin() + cuts[i], positions.begin() + cuts[i + 1]);
          std::sort(spec.positions.begin(), spec.positions.end());
          spec.centroid.assign(L.head_dim, 1.0f + 0.01f * static_cast<float>(i));
          c.clusters.push_back(std::move(spec));
        }
        m.clusterings.push_back(std::move(c));
      }
    }
  }
  drop_pages = static_cast<int32_t>(std::min<int64_t>(drop_pages, complete - cluster_pages));
  m.drop_pages = std::max(0, drop_pages);
  LIVEKV_ASSIGN_OR_RETURN(v1::Session s, store->Append(session->id, session->num_tokens, n, keys, values, m));
  session->num_tokens = s.num_tokens();
  session->first_positional = positional_start + consumed + int64_t{m.drop_pages} * L.page_tokens;
  return absl::OkStatus();
}

absl::StatusOr<SessionBlocks> ReadBlocks(v1::KvStore::Stub* stub, const std::string& session_id) {
  grpc::ClientContext context;
  SetDeadline(&context, absl::Seconds(30));
  v1::GetIndexRequest request;
  request.set_session_id(session_id);
  request.set_with_positions(true);
  v1::GetIndexResponse index;
  LIVEKV_RETURN_IF_ERROR(FromGrpcStatus(stub->GetIndex(&context, request, &index)));
  SessionBlocks out;
  out.version = index.version();
  LIVEKV_ASSIGN_OR_RETURN(out.geometry, FromProto(index.geometry()));
  const PageLayout& L = out.geometry.layout;
  const size_t page_bytes = L.page_bytes();
  for (const v1::HeadIndex& h : index.heads()) {
    if (h.sink_count() > 0) {
      IndexedBlock b;
      b.layer = h.layer();
      b.kv_head = h.kv_head();
      b.block = {BlockRef::Kind::kSink, 0, 0};
      for (int64_t p = 0; p < h.sink_count(); ++p) b.positions.push_back(p);
      b.may_grow = true;
      b.buffer.assign(L.PagesFor(out.geometry.sink_tokens) * page_bytes, 0);
      out.blocks.push_back(std::move(b));
    }
    int64_t next = 0;
    for (int c = 0; c < h.cluster_sizes_size(); ++c) {
      IndexedBlock b;
      b.layer = h.layer();
      b.kv_head = h.kv_head();
      b.block = {BlockRef::Kind::kCluster, c, 0};
      for (int32_t i = 0; i < h.cluster_sizes(c); ++i) b.positions.push_back(h.cluster_positions(next + i));
      next += h.cluster_sizes(c);
      b.buffer.assign(L.PagesFor(h.cluster_sizes(c)) * page_bytes, 0);
      out.blocks.push_back(std::move(b));
    }
    for (int p = 0; p < h.page_first_positions_size(); ++p) {
      IndexedBlock b;
      b.layer = h.layer();
      b.kv_head = h.kv_head();
      b.block = {BlockRef::Kind::kPage, 0, h.page_first_positions(p)};
      for (int32_t i = 0; i < h.page_counts(p); ++i) b.positions.push_back(h.page_first_positions(p) + i);
      b.may_grow = true;
      b.buffer.assign(page_bytes, 0);
      out.blocks.push_back(std::move(b));
    }
  }
  return out;
}

std::string CheckBlock(const PageLayout& L, uint64_t tag, const IndexedBlock& block, absl::Span<const uint8_t> bytes) {
  const size_t rb = L.row_bytes();
  const size_t page_bytes = L.page_bytes();
  if (bytes.size() % page_bytes != 0) return absl::StrCat("run of ", bytes.size(), " bytes");
  const int64_t rows = static_cast<int64_t>(bytes.size() / page_bytes) * L.page_tokens;
  const std::string zero(rb, '\0');
  const int64_t first = block.positions.empty() ? 0 : block.positions.front();
  bool grown_end = false;  // once a row past the index reads zero, every later one must too
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* page = bytes.data() + (r / L.page_tokens) * page_bytes;
    const int32_t row = static_cast<int32_t>(r % L.page_tokens);
    const absl::string_view k(reinterpret_cast<const char*>(L.KRow(page, row)), rb);
    const absl::string_view v(reinterpret_cast<const char*>(L.VRow(page, row)), rb);
    const std::string where = absl::StrCat("layer ", block.layer, " head ", block.kv_head, " block kind ",
                                           static_cast<int>(block.block.kind), " index ", block.block.index,
                                           " position ", block.block.first_position, " row ", r);
    if (r < static_cast<int64_t>(block.positions.size())) {
      const int64_t pos = block.positions[r];
      if (k != PatternRow(L, tag, block.layer, block.kv_head, pos, true) ||
          v != PatternRow(L, tag, block.layer, block.kv_head, pos, false)) {
        return absl::StrCat(where, ": not the pattern of position ", pos);
      }
      continue;
    }
    const bool zeros = k == zero && v == zero;
    if (zeros) {
      grown_end = true;
      continue;
    }
    const int64_t pos = block.block.kind == BlockRef::Kind::kSink ? r : first + r;
    if (!block.may_grow || grown_end || k != PatternRow(L, tag, block.layer, block.kv_head, pos, true) ||
        v != PatternRow(L, tag, block.layer, block.kv_head, pos, false)) {
      return absl::StrCat(where, ": past the block's ", block.positions.size(), " tokens, neither zero nor ",
                          block.may_grow ? absl::StrCat("the pattern of position ", pos) : "");
    }
  }
  return "";
}

absl::Status UcxUsable() { return ucx::ClientContext().status(); }

}  // namespace livekv::channel_testing
