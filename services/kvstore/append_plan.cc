#include "services/kvstore/append_plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace livekv {
namespace {

// Pages of (layer, head) after the append, without materialising them.
int64_t PageCountAfterAppend(const SequenceKv& kv, const HeadKv& head, int64_t n) {
  const KvGeometry& g = kv.geometry();
  const int32_t P = g.layout.page_tokens;
  const int64_t start = kv.num_tokens();
  const int64_t end = start + n;
  const int64_t pos = std::max<int64_t>(start, g.sink_tokens);
  int64_t pages = head.num_pages();
  if (end <= pos) return pages;  // every new token (if any) lands in the sink
  int64_t capacity_end = pages == 0 ? pos : head.page(pages - 1).first_position + P;
  if (capacity_end < pos) capacity_end = pos;
  if (capacity_end < end) pages += (end - capacity_end + P - 1) / P;
  return pages;
}

}  // namespace

std::vector<PlannedPage> PagesAfterAppend(const SequenceKv& kv, int32_t layer, int32_t kv_head, int64_t n) {
  const KvGeometry& g = kv.geometry();
  const int32_t P = g.layout.page_tokens;
  const HeadKv& head = kv.head(layer, kv_head);
  std::vector<PlannedPage> pages;
  pages.reserve(static_cast<size_t>(PageCountAfterAppend(kv, head, n)));
  for (int32_t p = 0; p < head.num_pages(); ++p) pages.push_back({head.page(p).first_position, head.page(p).count});
  // SequenceKv::Append: positions below the sink go to the sink; the rest fill the last page, then new pages of
  // P consecutive positions.
  const int64_t start = kv.num_tokens();
  const int64_t end = start + n;
  const int64_t pos = std::max<int64_t>(start, g.sink_tokens);
  if (end <= pos) return pages;
  int64_t capacity_end = pos;
  if (!pages.empty()) {
    PlannedPage& last = pages.back();
    capacity_end = std::max<int64_t>(pos, last.first_position + P);
    const int64_t filled_end = std::min(end, last.first_position + P);
    if (filled_end > last.first_position) {
      last.count = static_cast<int32_t>(std::max<int64_t>(last.count, filled_end - last.first_position));
    }
  }
  for (int64_t first = capacity_end; first < end; first += P) {
    pages.push_back({first, static_cast<int32_t>(std::min<int64_t>(P, end - first))});
  }
  return pages;
}

absl::Status ValidateClusteringAfterAppend(const SequenceKv& kv, int64_t n, const HeadClustering& c) {
  const KvGeometry& g = kv.geometry();
  if (c.layer < 0 || c.layer >= g.num_layers || c.kv_head < 0 || c.kv_head >= g.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("clustering.layer/kv_head: layer ", c.layer, " head ", c.kv_head,
                                                   " is outside the session's geometry (", g.num_layers,
                                                   " layers, ", g.num_kv_heads, " KV heads)"));
  }
  const std::vector<PlannedPage> pages = PagesAfterAppend(kv, c.layer, c.kv_head, n);
  if (c.num_pages < 0 || c.num_pages > static_cast<int64_t>(pages.size())) {
    return absl::InvalidArgumentError(absl::StrCat("clustering.num_pages: layer ", c.layer, " head ", c.kv_head,
                                                   " clusters ", c.num_pages, " pages; after the append it has ",
                                                   pages.size()));
  }
  // Positional pages are consecutive, so the pages' tokens are the positions [begin, end).
  int64_t begin = 0, end = 0;
  if (c.num_pages > 0) {
    begin = pages[0].first_position;
    end = pages[c.num_pages - 1].first_position + pages[c.num_pages - 1].count;
  }
  std::vector<bool> seen(static_cast<size_t>(end - begin), false);
  int64_t total = 0;
  for (size_t k = 0; k < c.clusters.size(); ++k) {
    const ClusterSpec& spec = c.clusters[k];
    if (spec.positions.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("clustering.clusters[", k, "].positions: layer ", c.layer,
                                                     " head ", c.kv_head, ": cluster ", k, " is empty"));
    }
    if (static_cast<int64_t>(spec.centroid.size()) != g.layout.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("clustering.clusters[", k, "].centroid: layer ", c.layer,
                                                     " head ", c.kv_head, ": cluster ", k, " centroid has ",
                                                     spec.centroid.size(), " values, head_dim is ",
                                                     g.layout.head_dim));
    }
    for (int32_t p : spec.positions) {
      if (p < begin || p >= end || seen[p - begin]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "clustering.clusters[", k, "].positions: layer ", c.layer, " head ", c.kv_head, ": cluster ", k,
            " lists position ", p, ", which is not an unassigned token of the clustered pages [", begin, ", ", end,
            ")"));
      }
      seen[p - begin] = true;
      ++total;
    }
  }
  if (total != end - begin) {
    return absl::InvalidArgumentError(absl::StrCat("clustering.clusters: layer ", c.layer, " head ", c.kv_head,
                                                   ": clusters hold ", total, " tokens, the ", c.num_pages,
                                                   " clustered pages hold ", end - begin));
  }
  return absl::OkStatus();
}

absl::Status ValidateMaintenanceAfterAppend(const SequenceKv& kv, int64_t n, const Maintenance& m) {
  if (m.drop_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat("drop_pages must be >= 0, saw ", m.drop_pages));
  }
  std::set<std::pair<int32_t, int32_t>> heads;
  std::map<int32_t, int32_t> layer_pages;  // layer -> num_pages of its first clustering
  for (const HeadClustering& c : m.clusterings) {
    LIVEKV_RETURN_IF_ERROR(ValidateClusteringAfterAppend(kv, n, c));
    if (!heads.insert({c.layer, c.kv_head}).second) {
      return absl::InvalidArgumentError(absl::StrCat("clustering: layer ", c.layer, " head ", c.kv_head,
                                                     " is clustered twice in one append"));
    }
    auto [it, inserted] = layer_pages.emplace(c.layer, c.num_pages);
    if (!inserted && it->second != c.num_pages) {
      return absl::InvalidArgumentError(absl::StrCat("clustering.num_pages: layer ", c.layer,
                                                     ": heads clustered over different page counts (", it->second,
                                                     " and ", c.num_pages, ")"));
    }
  }
  for (const auto& [layer, pages] : layer_pages) {
    for (int32_t h = 0; h < kv.geometry().num_kv_heads; ++h) {
      if (!heads.count({layer, h})) {
        return absl::InvalidArgumentError(absl::StrCat("clustering: layer ", layer, " is clustered but head ", h,
                                                       " is missing (every KV head of a layer is clustered alike)"));
      }
    }
  }
  return absl::OkStatus();
}

size_t PoolBytesAfterAppend(const SequenceKv& kv, int64_t n, const Maintenance& m) {
  const KvGeometry& g = kv.geometry();
  const PageLayout& L = g.layout;
  std::map<std::pair<int32_t, int32_t>, const HeadClustering*> by_head;
  for (const HeadClustering& c : m.clusterings) by_head[{c.layer, c.kv_head}] = &c;
  int64_t pages = 0;
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const HeadKv& head = kv.head(l, h);
      if (g.sink_tokens > 0) pages += L.PagesFor(g.sink_tokens);
      for (int32_t c = 0; c < head.num_clusters(); ++c) pages += L.PagesFor(head.cluster(c).num_tokens);
      int64_t positional = PageCountAfterAppend(kv, head, n);
      auto it = by_head.find({l, h});
      if (it != by_head.end()) {
        positional -= it->second->num_pages;
        for (const ClusterSpec& spec : it->second->clusters) pages += L.PagesFor(spec.positions.size());
      }
      positional -= std::min<int64_t>(m.drop_pages, positional);
      pages += positional;
    }
  }
  return static_cast<size_t>(pages) * L.page_bytes();
}

absl::Status TryClusterRuns(PagePool* pool, const PageLayout& layout, const std::vector<HeadClustering>& clusterings) {
  std::vector<PagePool::Key> placed;
  absl::Status status;
  for (const HeadClustering& c : clusterings) {
    for (size_t k = 0; k < c.clusters.size() && status.ok(); ++k) {
      const int64_t pages = layout.PagesFor(c.clusters[k].positions.size());
      const PagePool::Key key = pool->NewKey();
      absl::StatusOr<PagePool::Handle> h =
          pages > pool->num_pages() ? absl::StatusOr<PagePool::Handle>(absl::ResourceExhaustedError(absl::StrCat(
                                          "a run of ", pages, " pages is larger than the pool (", pool->num_pages(),
                                          " pages)")))
                                    : pool->Insert(key, static_cast<uint32_t>(pages), /*evictable=*/false);
      if (!h.ok()) {
        status = absl::ResourceExhaustedError(absl::StrCat("KV pool full: cannot place cluster ", k, " of layer ",
                                                           c.layer, " head ", c.kv_head, " (", pages, " pages): ",
                                                           h.status().message()));
        break;
      }
      placed.push_back(key);  // the handle unpins at the end of the iteration; Erase below frees at once
    }
    if (!status.ok()) break;
  }
  for (PagePool::Key key : placed) pool->Erase(key);
  return status;
}

}  // namespace livekv
