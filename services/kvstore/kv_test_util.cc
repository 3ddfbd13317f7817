#include "services/kvstore/kv_test_util.h"

#include <cstring>

#include "common/logging.h"
#include "gtest/gtest.h"

namespace livekv {
namespace testing_util {
namespace {

float Value(uint64_t seed, int64_t layer, int64_t head, int64_t pos, int64_t c, bool key) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (layer << 48) ^ (head << 40) ^ (pos << 12) ^ (c << 1) ^ (key ? 1 : 0);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  // Keys get a per-position group offset so clusters exist.
  const float noise = static_cast<float>(x >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
  return key ? noise * 0.25f + static_cast<float>((pos % 3) - 1) : noise;
}

}  // namespace

Rows MakeRows(const KvGeometry& g, int64_t first_position, int64_t n, uint64_t seed) {
  Rows rows;
  rows.n = n;
  const int64_t d = g.layout.head_dim;
  const size_t es = DTypeSize(g.layout.dtype);
  for (int32_t l = 0; l < g.num_layers; ++l) {
    std::vector<float> k(n * g.num_kv_heads * d), v(k.size());
    for (int64_t t = 0; t < n; ++t) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        for (int64_t c = 0; c < d; ++c) {
          const size_t i = (t * g.num_kv_heads + h) * d + c;
          k[i] = Value(seed, l, h, first_position + t, c, true);
          v[i] = Value(seed, l, h, first_position + t, c, false);
        }
      }
    }
    std::string kb(k.size() * es, '\0'), vb(v.size() * es, '\0');
    ConvertFromF32(k.data(), k.size(), g.layout.dtype, kb.data());
    ConvertFromF32(v.data(), v.size(), g.layout.dtype, vb.data());
    rows.keys.push_back(std::move(kb));
    rows.values.push_back(std::move(vb));
  }
  return rows;
}

absl::Status AppendRows(SequenceKv* kv, const Rows& rows) {
  for (int32_t l = 0; l < kv->geometry().num_layers; ++l) {
    absl::Status s = kv->Append(l, rows.keys[l].data(), rows.values[l].data(), rows.n, kv->geometry().layout.dtype);
    if (!s.ok()) {
      kv->Rollback();
      return s;
    }
  }
  return kv->Commit(rows.n);
}

absl::Status AppendWithEvenOddClusters(SessionStore* store, const KvGeometry& g, const std::string& id, int64_t from,
                                       int64_t n, int32_t cluster_pages, int64_t first_positional) {
  const Rows rows = MakeRows(g, from, n);
  absl::StatusOr<AppendTicket> ticket = store->BeginAppend(id, from, n, absl::ZeroDuration());
  if (!ticket.ok()) return ticket.status();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    absl::StatusOr<int64_t> staged = store->StageRows(ticket->append_id, l, 0, n, rows.keys[l], rows.values[l]);
    if (!staged.ok()) return staged.status();
  }
  for (int32_t l = 0; l < g.num_layers && cluster_pages > 0; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      HeadClustering c{l, h, cluster_pages, {}};
      ClusterSpec even, odd;
      const int64_t end = first_positional + int64_t{cluster_pages} * g.layout.page_tokens;
      for (int64_t p = first_positional; p < end; ++p) {
        (p % 2 == 0 ? even : odd).positions.push_back(static_cast<int32_t>(p));
      }
      even.centroid.assign(g.layout.head_dim, 0.5f);
      odd.centroid.assign(g.layout.head_dim, -0.5f);
      c.clusters = {even, odd};
      absl::StatusOr<int64_t> staged = store->StageClustering(ticket->append_id, c);
      if (!staged.ok()) return staged.status();
    }
  }
  return store->CommitAppend(ticket->append_id).status();
}

Maintenance PlanClusterings(const SequenceKv& kv, const std::vector<int32_t>& layers, int32_t num_pages,
                            int32_t clusters) {
  Maintenance m;
  KMeansOptions km;
  km.iterations = 10;
  km.seed = 7;
  for (int32_t layer : layers) {
    absl::StatusOr<std::vector<HeadClustering>> plan = kv.PlanClustering(layer, num_pages, clusters, km, nullptr);
    CHECK(plan.ok()) << plan.status();
    for (HeadClustering& c : *plan) m.clusterings.push_back(std::move(c));
  }
  return m;
}

std::string ValidRows(absl::Span<const uint8_t> run, const PageLayout& L, int64_t tokens) {
  std::string out;
  const size_t rb = L.row_bytes();
  for (size_t page = 0; page * L.page_bytes() < run.size(); ++page) {
    const int64_t rows = std::min<int64_t>(L.page_tokens, std::max<int64_t>(0, tokens - int64_t(page) * L.page_tokens));
    const uint8_t* p = run.data() + page * L.page_bytes();
    out.append(reinterpret_cast<const char*>(L.KRow(p, 0)), rows * rb);
    out.append(reinterpret_cast<const char*>(L.VRow(p, 0)), rows * rb);
  }
  return out;
}

int64_t BlockTokens(const SequenceKv& kv, int32_t layer, int32_t kv_head, const BlockRef& block) {
  const HeadKv& head = kv.head(layer, kv_head);
  switch (block.kind) {
    case BlockRef::Kind::kSink: return head.sink_count();
    case BlockRef::Kind::kCluster: return head.cluster(block.index).num_tokens;
    case BlockRef::Kind::kPage:
      for (int32_t p = 0; p < head.num_pages(); ++p) {
        if (head.page(p).first_position == block.first_position) return head.page(p).count;
      }
  }
  return -1;
}

void ExpectSameSequence(const SequenceKv& a, const SequenceKv& b) {
  const KvGeometry& g = a.geometry();
  ASSERT_EQ(a.num_tokens(), b.num_tokens());
  ASSERT_EQ(g.num_layers, b.geometry().num_layers);
  ASSERT_EQ(g.num_kv_heads, b.geometry().num_kv_heads);
  const int64_t d = g.layout.head_dim;
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h);
      const HeadKv& x = a.head(l, h);
      const HeadKv& y = b.head(l, h);
      ASSERT_EQ(x.sink_count(), y.sink_count());
      ASSERT_EQ(x.num_clusters(), y.num_clusters());
      ASSERT_EQ(x.cluster_sizes(), y.cluster_sizes());
      for (int32_t c = 0; c < x.num_clusters(); ++c) ASSERT_EQ(x.cluster(c).positions, y.cluster(c).positions);
      ASSERT_EQ(0, std::memcmp(x.centroids(), y.centroids(), x.num_clusters() * d * sizeof(float)));
      ASSERT_EQ(x.num_pages(), y.num_pages());
      for (int32_t p = 0; p < x.num_pages(); ++p) {
        ASSERT_EQ(x.page(p).first_position, y.page(p).first_position);
        ASSERT_EQ(x.page(p).count, y.page(p).count);
      }
      ASSERT_EQ(x.num_complete_pages(), y.num_complete_pages());
      ASSERT_EQ(0, std::memcmp(x.page_hi(), y.page_hi(), x.num_complete_pages() * d * sizeof(float)));
      ASSERT_EQ(0, std::memcmp(x.page_lo(), y.page_lo(), x.num_complete_pages() * d * sizeof(float)));
      const std::vector<BlockRef> blocks = a.SelectedBlocks(l, h, a.SelectAll(l, h));
      ASSERT_EQ(blocks.size(), b.SelectedBlocks(l, h, b.SelectAll(l, h)).size());
      for (const BlockRef& block : blocks) {
        const int64_t tokens = BlockTokens(a, l, h, block);
        ASSERT_EQ(tokens, BlockTokens(b, l, h, block));
        auto ra = a.BlockBytes(l, h, block);
        auto rb = b.BlockBytes(l, h, block);
        ASSERT_TRUE(ra.ok()) << ra.status();
        ASSERT_TRUE(rb.ok()) << rb.status();
        ASSERT_EQ(ra->size(), rb->size());
        ASSERT_EQ(ValidRows(*ra, g.layout, tokens), ValidRows(*rb, g.layout, tokens))
            << "block kind " << int(block.kind) << " index " << block.index << " position " << block.first_position;
      }
    }
  }
}

std::string AllRows(const SequenceKv& kv) {
  std::string out;
  const KvGeometry& g = kv.geometry();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      for (const BlockRef& block : kv.SelectedBlocks(l, h, kv.SelectAll(l, h))) {
        auto run = kv.BlockBytes(l, h, block);
        CHECK(run.ok()) << run.status();
        out += ValidRows(*run, g.layout, BlockTokens(kv, l, h, block));
      }
    }
  }
  return out;
}

NewSession SmallFullSession(const std::string& id, const KvGeometry& g) {
  NewSession ns;
  ns.session_id = id;
  ns.model = "tiny";
  ns.geometry = g;
  ns.policy.kind = PolicyKind::kFull;
  ns.policy.window = 4;
  ns.policy.cluster_window = 4;
  ns.policy.window_clusters = 1;
  ns.policy.dense_layers.clear();
  return ns;
}

}  // namespace testing_util
}  // namespace livekv
