#include "kvcache/sequence_kv.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"

namespace livekv {
absl::Status KvGeometry::Validate() const {
  LIVEKV_RETURN_IF_ERROR(layout.Validate());
  if (num_layers <= 0) return absl::InvalidArgumentError(absl::StrCat("num_layers must be positive, saw ", num_layers));
  if (num_kv_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_kv_heads must be positive, saw ", num_kv_heads));
  }
  if (sink_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("sink_tokens must be >= 0, saw ", sink_tokens));
  return absl::OkStatus();
}

int64_t HeadKv::positional_tokens() const {
  int64_t n = 0;
  for (const Page& p : pages_) n += p.count;
  return n;
}

SequenceKv::SequenceKv(const KvGeometry& geometry, PagePool* pool)
    : geometry_(geometry),
      pool_(pool),
      heads_(static_cast<size_t>(geometry.num_layers) * geometry.num_kv_heads),
      pending_(geometry.num_layers, 0),
      pages_before_(heads_.size(), 0) {
  for (HeadKv& h : heads_) h.head_dim_ = geometry.layout.head_dim;
}

absl::StatusOr<std::unique_ptr<SequenceKv>> SequenceKv::Create(const KvGeometry& geometry, PagePool* pool) {
  LIVEKV_RETURN_IF_ERROR(geometry.Validate());
  if (pool->page_bytes() != geometry.layout.page_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("page pool has pages of ", pool->page_bytes(),
                                                   " bytes, the KV layout needs ", geometry.layout.page_bytes()));
  }
  std::unique_ptr<SequenceKv> seq(new SequenceKv(geometry, pool));
  if (geometry.sink_tokens > 0) {
    const uint32_t pages = static_cast<uint32_t>(geometry.layout.PagesFor(geometry.sink_tokens));
    for (HeadKv& h : seq->heads_) {
      LIVEKV_RETURN_IF_ERROR(seq->AllocateRun(pages, &h.sink_key_, &h.sink_page_));
    }
  }
  return seq;
}

SequenceKv::~SequenceKv() {
  const uint32_t sink_pages = static_cast<uint32_t>(geometry_.layout.PagesFor(geometry_.sink_tokens));
  for (HeadKv& h : heads_) {
    if (h.sink_key_ != 0) FreeRun(h.sink_key_, sink_pages);
    for (const HeadKv::Cluster& c : h.clusters_) FreeRun(c.key, RunPages(c));
    for (const HeadKv::Page& p : h.pages_) FreeRun(p.key, 1);
  }
}

uint8_t* SequenceKv::PageAddress(uint32_t pool_page) const {
  return pool_->base() + static_cast<size_t>(pool_page) * pool_->page_bytes();
}

absl::Status SequenceKv::AllocateRun(uint32_t pages, PagePool::Key* key, uint32_t* first_page) {
  *key = pool_->NewKey();
  LIVEKV_ASSIGN_OR_RETURN(PagePool::Handle handle, pool_->Insert(*key, pages, /*evictable=*/false));
  *first_page = handle.first_page();
  pool_bytes_ += handle.bytes();
  return absl::OkStatus();  // the handle unpins; owned entries stay until FreeRun
}

void SequenceKv::FreeRun(PagePool::Key key, uint32_t pages) {
  pool_->Erase(key);
  pool_bytes_ -= pages * pool_->page_bytes();
}

absl::Status SequenceKv::Append(int32_t layer, const void* k, const void* v, int64_t n, DType dtype) {
  if (layer < 0 || layer >= geometry_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " out of range [0, ", geometry_.num_layers, ")"));
  }
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("append of ", n, " rows"));
  const PageLayout& L = geometry_.layout;
  const int32_t heads = geometry_.num_kv_heads;
  const int64_t d = L.head_dim;
  const size_t src_row = d * DTypeSize(dtype);
  const int64_t start = committed_ + pending_[layer];
  // Make room first so a failure leaves the layer as it was.
  std::vector<std::vector<HeadKv::Page>> added(heads);
  for (int32_t h = 0; h < heads; ++h) {
    HeadKv& head = heads_[Index(layer, h)];
    int64_t pos = std::max<int64_t>(start, geometry_.sink_tokens);
    const int64_t end = start + n;
    int64_t capacity_end = head.pages_.empty() ? pos : head.pages_.back().first_position + L.page_tokens;
    if (head.pages_.empty() || capacity_end < pos) capacity_end = pos;
    while (capacity_end < end) {
      HeadKv::Page page;
      absl::Status s = AllocateRun(1, &page.key, &page.pool_page);
      if (!s.ok()) {
        for (auto& list : added) {
          for (const HeadKv::Page& p : list) FreeRun(p.key, 1);
        }
        return s;
      }
      page.first_position = capacity_end;
      added[h].push_back(page);
      capacity_end += L.page_tokens;
    }
  }
  for (int32_t h = 0; h < heads; ++h) {
    HeadKv& head = heads_[Index(layer, h)];
    for (const HeadKv::Page& p : added[h]) head.pages_.push_back(p);
    const uint8_t* ks = static_cast<const uint8_t*>(k);
    const uint8_t* vs = static_cast<const uint8_t*>(v);
    // Pages are contiguous in position from the first one holding `start`.
    size_t pi = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = start + t;
      const size_t src = (static_cast<size_t>(t) * heads + h) * src_row;
      uint8_t* page;
      int32_t row;
      if (pos < geometry_.sink_tokens) {
        page = PageAddress(head.sink_page_) + (pos / L.page_tokens) * L.page_bytes();
        row = static_cast<int32_t>(pos % L.page_tokens);
        head.sink_count_ = static_cast<int32_t>(pos + 1);
      } else {
        while (head.pages_[pi].first_position + L.page_tokens <= pos) ++pi;
        HeadKv::Page& p = head.pages_[pi];
        page = PageAddress(p.pool_page);
        row = static_cast<int32_t>(pos - p.first_position);
        p.count = std::max(p.count, row + 1);
      }
      ConvertFloats(ks + src, dtype, L.KRow(page, row), L.dtype, d);
      ConvertFloats(vs + src, dtype, L.VRow(page, row), L.dtype, d);
    }
  }
  pending_[layer] += n;
  return absl::OkStatus();
}

absl::Status SequenceKv::Commit(int64_t n) {
  for (int32_t l = 0; l < geometry_.num_layers; ++l) {
    if (pending_[l] != n) {
      return absl::FailedPreconditionError(
          absl::StrCat("commit of ", n, " tokens but layer ", l, " appended ", pending_[l]));
    }
  }
  committed_ += n;
  std::fill(pending_.begin(), pending_.end(), 0);
  for (size_t i = 0; i < heads_.size(); ++i) {
    HeadKv& head = heads_[i];
    for (int32_t p = head.num_complete_pages(); p < head.num_pages(); ++p) {
      if (head.pages_[p].count == geometry_.layout.page_tokens) Summarise(head, p);
    }
    pages_before_[i] = head.num_pages();
  }
  return absl::OkStatus();
}

void SequenceKv::Rollback() {
  for (size_t i = 0; i < heads_.size(); ++i) {
    HeadKv& head = heads_[i];
    while (head.num_pages() > pages_before_[i]) {
      FreeRun(head.pages_.back().key, 1);
      head.pages_.pop_back();
    }
    if (!head.pages_.empty()) {
      HeadKv::Page& last = head.pages_.back();
      last.count = static_cast<int32_t>(
          std::min<int64_t>(geometry_.layout.page_tokens, std::max<int64_t>(0, committed_ - last.first_position)));
    }
    head.sink_count_ = static_cast<int32_t>(std::min<int64_t>(committed_, geometry_.sink_tokens));
  }
  std::fill(pending_.begin(), pending_.end(), 0);
}

void SequenceKv::Summarise(HeadKv& head, int32_t page_index) {
  // Bounds are appended in page order; callers summarise the next unsummarised complete page.
  CHECK_EQ(page_index, head.num_complete_pages());
  const PageLayout& L = geometry_.layout;
  const int64_t d = L.head_dim;
  const uint8_t* page = PageAddress(head.pages_[page_index].pool_page);
  std::vector<float> hi(d, -std::numeric_limits<float>::infinity()), lo(d, std::numeric_limits<float>::infinity());
  std::vector<float> row(d);
  for (int32_t r = 0; r < L.page_tokens; ++r) {
    ConvertFloats(L.KRow(page, r), L.dtype, row.data(), DType::kF32, d);
    for (int64_t c = 0; c < d; ++c) {
      hi[c] = std::max(hi[c], row[c]);
      lo[c] = std::min(lo[c], row[c]);
    }
  }
  head.page_hi_.insert(head.page_hi_.end(), hi.begin(), hi.end());
  head.page_lo_.insert(head.page_lo_.end(), lo.begin(), lo.end());
}

absl::Status SequenceKv::ClusterPages(int32_t layer, int32_t num_pages, int32_t num_clusters,
                                      const KMeansOptions& kmeans, ThreadPool* threads) {
  LIVEKV_ASSIGN_OR_RETURN(std::vector<HeadClustering> plan,
                          PlanClustering(layer, num_pages, num_clusters, kmeans, threads));
  return ApplyClustering(plan);
}

absl::StatusOr<std::vector<HeadClustering>> SequenceKv::PlanClustering(int32_t layer, int32_t num_pages,
                                                                       int32_t num_clusters,
                                                                       const KMeansOptions& kmeans,
                                                                       ThreadPool* threads) const {
  if (layer < 0 || layer >= geometry_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
  }
  if (pending_[layer] != 0) {
    return absl::FailedPreconditionError("cannot cluster a layer with uncommitted rows");
  }
  const int32_t heads = geometry_.num_kv_heads;
  for (int32_t h = 0; h < heads; ++h) {
    if (num_pages < 0 || num_pages > heads_[Index(layer, h)].num_pages()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot cluster ", num_pages, " pages of layer ", layer,
                                                     " head ", h, ", which has ",
                                                     heads_[Index(layer, h)].num_pages()));
    }
  }
  std::vector<absl::StatusOr<HeadClustering>> plans(heads, absl::UnknownError("not planned"));
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) plans[h] = PlanHead(layer, static_cast<int32_t>(h), num_pages, num_clusters, kmeans);
  };
  if (threads != nullptr) {
    threads->ParallelFor(heads, work);
  } else {
    work(0, heads);
  }
  std::vector<HeadClustering> out;
  for (auto& p : plans) {
    LIVEKV_RETURN_IF_ERROR(p.status());
    out.push_back(std::move(*p));
  }
  return out;
}

absl::StatusOr<HeadClustering> SequenceKv::PlanHead(int32_t layer, int32_t h, int32_t num_pages, int32_t num_clusters,
                                                    const KMeansOptions& kmeans) const {
  const HeadKv& head = heads_[Index(layer, h)];
  const PageLayout& L = geometry_.layout;
  const int64_t d = L.head_dim;
  HeadClustering plan;
  plan.layer = layer;
  plan.kv_head = h;
  plan.num_pages = num_pages;
  int64_t n = 0;
  for (int32_t p = 0; p < num_pages; ++p) n += head.pages_[p].count;
  if (n == 0) return plan;
  std::vector<float> keys(n * d);
  std::vector<int32_t> positions(n);
  int64_t i = 0;
  for (int32_t p = 0; p < num_pages; ++p) {
    const HeadKv::Page& page = head.pages_[p];
    const uint8_t* addr = PageAddress(page.pool_page);
    for (int32_t r = 0; r < page.count; ++r, ++i) {
      ConvertFloats(L.KRow(addr, r), L.dtype, &keys[i * d], DType::kF32, d);
      positions[i] = static_cast<int32_t>(page.first_position + r);
    }
  }
  KMeansOptions opts = kmeans;
  opts.num_clusters = static_cast<int32_t>(std::min<int64_t>(std::max(1, num_clusters), n));
  LIVEKV_ASSIGN_OR_RETURN(KMeansResult km, KMeans(keys.data(), n, static_cast<int32_t>(d), opts));
  // Members of each cluster in position order, so a cluster's run is ordered like the sequence.
  std::vector<ClusterSpec> clusters(opts.num_clusters);
  for (int64_t t = 0; t < n; ++t) clusters[km.labels[t]].positions.push_back(positions[t]);
  for (int32_t c = 0; c < opts.num_clusters; ++c) {
    if (clusters[c].positions.empty()) continue;
    clusters[c].centroid.assign(km.centroids.begin() + c * d, km.centroids.begin() + (c + 1) * d);
    plan.clusters.push_back(std::move(clusters[c]));
  }
  return plan;
}

absl::Status SequenceKv::ValidateClustering(const HeadClustering& c) const {
  if (c.layer < 0 || c.layer >= geometry_.num_layers || c.kv_head < 0 || c.kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("clustering names layer ", c.layer, " head ", c.kv_head,
                                                   ", outside the session's geometry"));
  }
  const HeadKv& head = heads_[Index(c.layer, c.kv_head)];
  if (c.num_pages < 0 || c.num_pages > head.num_pages()) {
    return absl::InvalidArgumentError(absl::StrCat("clustering of layer ", c.layer, " head ", c.kv_head, " consumes ",
                                                   c.num_pages, " pages; the head has ", head.num_pages()));
  }
  if (pending_[c.layer] != 0) return absl::FailedPreconditionError("cannot cluster a layer with uncommitted rows");
  // The clusters' positions must be a permutation of the pages' tokens.
  int64_t begin = 0, end = 0, n = 0;
  if (c.num_pages > 0) {
    begin = head.pages_[0].first_position;
    end = head.pages_[c.num_pages - 1].first_position + head.pages_[c.num_pages - 1].count;
    for (int32_t p = 0; p < c.num_pages; ++p) n += head.pages_[p].count;
  }
  std::vector<bool> seen(end - begin, false);
  int64_t total = 0;
  for (size_t k = 0; k < c.clusters.size(); ++k) {
    const ClusterSpec& spec = c.clusters[k];
    if (spec.positions.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", c.layer, " head ", c.kv_head, ": cluster ", k,
                                                     " is empty"));
    }
    if (static_cast<int64_t>(spec.centroid.size()) != geometry_.layout.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", c.layer, " head ", c.kv_head, ": cluster ", k,
                                                     " centroid has ", spec.centroid.size(), " values, head_dim is ",
                                                     geometry_.layout.head_dim));
    }
    for (int32_t p : spec.positions) {
      if (p < begin || p >= end || seen[p - begin]) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", c.layer, " head ", c.kv_head, ": cluster ", k,
                                                       " lists position ", p, ", which is not an unassigned token of ",
                                                       "the clustered pages [", begin, ", ", end, ")"));
      }
      seen[p - begin] = true;
      ++total;
    }
  }
  if (total != n) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", c.layer, " head ", c.kv_head, ": clusters hold ", total,
                                                   " tokens, the pages hold ", n));
  }
  return absl::OkStatus();
}

absl::Status SequenceKv::ApplyClustering(const std::vector<HeadClustering>& clusterings) {
  for (const HeadClustering& c : clusterings) LIVEKV_RETURN_IF_ERROR(ValidateClustering(c));
  for (size_t i = 0; i < clusterings.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (clusterings[i].layer == clusterings[j].layer && clusterings[i].kv_head == clusterings[j].kv_head) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", clusterings[i].layer, " head ",
                                                       clusterings[i].kv_head, " is clustered twice"));
      }
    }
  }
  // Heads of one layer must keep identical positional pages (policies read one head per layer).
  for (const HeadClustering& c : clusterings) {
    for (const HeadClustering& o : clusterings) {
      if (o.layer == c.layer && o.num_pages != c.num_pages) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", c.layer, ": heads clustered over different page ",
                                                       "counts (", c.num_pages, " and ", o.num_pages, ")"));
      }
    }
  }
  const PageLayout& L = geometry_.layout;
  // Allocate every run first, so a full pool changes nothing.
  std::vector<std::vector<HeadKv::Cluster>> made(clusterings.size());
  for (size_t i = 0; i < clusterings.size(); ++i) {
    for (const ClusterSpec& spec : clusterings[i].clusters) {
      HeadKv::Cluster cluster;
      cluster.num_tokens = static_cast<int32_t>(spec.positions.size());
      cluster.positions = spec.positions;
      absl::Status s = AllocateRun(RunPages(cluster), &cluster.key, &cluster.first_page);
      if (!s.ok()) {
        for (const auto& list : made) {
          for (const HeadKv::Cluster& m : list) FreeRun(m.key, RunPages(m));
        }
        return s;
      }
      made[i].push_back(std::move(cluster));
    }
  }
  for (size_t i = 0; i < clusterings.size(); ++i) {
    const HeadClustering& c = clusterings[i];
    HeadKv& head = MutableHead(c.layer, c.kv_head);
    if (c.num_pages == 0) continue;
    const int64_t begin = head.pages_[0].first_position;
    const int64_t d = L.head_dim;
    // Where each position's row lives: positional pages are consecutive and all but the last complete.
    auto row_of = [&](int32_t pos, const uint8_t** page, int32_t* row) {
      const int64_t p = (pos - begin) / L.page_tokens;
      *page = PageAddress(head.pages_[p].pool_page);
      *row = static_cast<int32_t>(pos - head.pages_[p].first_position);
    };
    for (size_t k = 0; k < made[i].size(); ++k) {
      HeadKv::Cluster& cluster = made[i][k];
      uint8_t* run = PageAddress(cluster.first_page);
      for (int32_t j = 0; j < cluster.num_tokens; ++j) {
        const uint8_t* src;
        int32_t row;
        row_of(cluster.positions[j], &src, &row);
        uint8_t* page = run + (j / L.page_tokens) * L.page_bytes();
        std::memcpy(L.KRow(page, j % L.page_tokens), L.KRow(src, row), L.row_bytes());
        std::memcpy(L.VRow(page, j % L.page_tokens), L.VRow(src, row), L.row_bytes());
      }
      head.centroids_.insert(head.centroids_.end(), c.clusters[k].centroid.begin(), c.clusters[k].centroid.end());
      head.cluster_sizes_.push_back(cluster.num_tokens);
      head.clustered_tokens_ += cluster.num_tokens;
      head.clusters_.push_back(std::move(cluster));
    }
    for (int32_t p = 0; p < c.num_pages; ++p) FreeRun(head.pages_[p].key, 1);
    head.pages_.erase(head.pages_.begin(), head.pages_.begin() + c.num_pages);
    const int32_t summarised = std::min(c.num_pages, head.num_complete_pages());
    head.page_hi_.erase(head.page_hi_.begin(), head.page_hi_.begin() + summarised * d);
    head.page_lo_.erase(head.page_lo_.begin(), head.page_lo_.begin() + summarised * d);
    pages_before_[Index(c.layer, c.kv_head)] = head.num_pages();
  }
  return absl::OkStatus();
}

absl::Status SequenceKv::DropPages(int32_t num_pages) {
  for (int32_t l = 0; l < geometry_.num_layers; ++l) {
    if (pending_[l] != 0) return absl::FailedPreconditionError("cannot drop pages with uncommitted rows");
  }
  for (size_t i = 0; i < heads_.size(); ++i) {
    HeadKv& head = heads_[i];
    const int32_t drop = std::min(num_pages, head.num_pages());
    for (int32_t p = 0; p < drop; ++p) FreeRun(head.pages_[p].key, 1);
    head.pages_.erase(head.pages_.begin(), head.pages_.begin() + drop);
    const int64_t d = geometry_.layout.head_dim;
    const int32_t summarised = std::min(drop, head.num_complete_pages());
    head.page_hi_.erase(head.page_hi_.begin(), head.page_hi_.begin() + summarised * d);
    head.page_lo_.erase(head.page_lo_.begin(), head.page_lo_.begin() + summarised * d);
    pages_before_[i] = head.num_pages();
  }
  return absl::OkStatus();
}

void SequenceKv::AppendRuns(int32_t layer, int32_t kv_head, const HeadSelection& s, std::vector<KvRun>* runs) const {
  const HeadKv& head = heads_[Index(layer, kv_head)];
  const PageLayout& L = geometry_.layout;
  auto emit_rows = [&](const uint8_t* page, int32_t begin, int32_t end, int64_t first_position) {
    if (end <= begin) return;
    KvRun r;
    r.k = L.KRow(page, begin);
    r.v = L.VRow(page, begin);
    r.n = end - begin;
    r.first_position = first_position;
    runs->push_back(r);
  };
  if (s.sink) {
    const uint8_t* sink = PageAddress(head.sink_page_);
    for (int32_t r = 0; r < head.sink_count_; r += L.page_tokens) {
      emit_rows(sink + (r / L.page_tokens) * L.page_bytes(), 0, std::min(L.page_tokens, head.sink_count_ - r), r);
    }
  }
  for (int32_t c : s.clusters) {
    const HeadKv::Cluster& cluster = head.clusters_[c];
    const uint8_t* run = PageAddress(cluster.first_page);
    for (int32_t r = 0; r < cluster.num_tokens; r += L.page_tokens) {
      emit_rows(run + (r / L.page_tokens) * L.page_bytes(), 0, std::min(L.page_tokens, cluster.num_tokens - r), -1);
    }
  }
  for (const PageRows& pr : s.pages) {
    const HeadKv::Page& page = head.pages_[pr.page];
    emit_rows(PageAddress(page.pool_page), pr.begin, std::min(pr.end, page.count), page.first_position + pr.begin);
  }
}

HeadSelection SequenceKv::SelectAll(int32_t layer, int32_t kv_head) const {
  const HeadKv& head = heads_[Index(layer, kv_head)];
  HeadSelection s;
  s.sink = true;
  s.clusters.resize(head.num_clusters());
  for (int32_t c = 0; c < head.num_clusters(); ++c) s.clusters[c] = c;
  for (int32_t p = 0; p < head.num_pages(); ++p) s.pages.push_back({p, 0, head.pages_[p].count});
  return s;
}

int64_t SequenceKv::SelectionTokens(int32_t layer, int32_t kv_head, const HeadSelection& s) const {
  const HeadKv& head = heads_[Index(layer, kv_head)];
  int64_t n = s.sink ? head.sink_count_ : 0;
  for (int32_t c : s.clusters) n += head.clusters_[c].num_tokens;
  for (const PageRows& pr : s.pages) n += std::max(0, std::min(pr.end, head.pages_[pr.page].count) - pr.begin);
  return n;
}

std::vector<int64_t> SequenceKv::SelectionPositions(int32_t layer, int32_t kv_head, const HeadSelection& s) const {
  const HeadKv& head = heads_[Index(layer, kv_head)];
  std::vector<int64_t> out;
  if (s.sink) {
    for (int32_t r = 0; r < head.sink_count_; ++r) out.push_back(r);
  }
  for (int32_t c : s.clusters) {
    for (int32_t p : head.clusters_[c].positions) out.push_back(p);
  }
  for (const PageRows& pr : s.pages) {
    const HeadKv::Page& page = head.pages_[pr.page];
    for (int32_t r = pr.begin; r < std::min(pr.end, page.count); ++r) out.push_back(page.first_position + r);
  }
  return out;
}

size_t SequenceKv::pool_bytes() const { return pool_bytes_.load(); }

}  // namespace livekv

namespace livekv {

absl::StatusOr<absl::Span<uint8_t>> SequenceKv::BlockBytes(int32_t layer, int32_t kv_head,
                                                          const BlockRef& block) const {
  if (layer < 0 || layer >= geometry_.num_layers || kv_head < 0 || kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("block of layer ", layer, " head ", kv_head,
                                                   " is outside the geometry"));
  }
  const HeadKv& head = heads_[Index(layer, kv_head)];
  const PageLayout& L = geometry_.layout;
  switch (block.kind) {
    case BlockRef::Kind::kSink:
      if (head.sink_key_ == 0) return absl::NotFoundError("the sequence has no sink");
      return absl::Span<uint8_t>(PageAddress(head.sink_page_), L.PagesFor(geometry_.sink_tokens) * L.page_bytes());
    case BlockRef::Kind::kCluster: {
      if (block.index < 0 || block.index >= head.num_clusters()) {
        return absl::NotFoundError(absl::StrCat("layer ", layer, " head ", kv_head, " has no cluster ", block.index,
                                                " (it has ", head.num_clusters(), ")"));
      }
      const HeadKv::Cluster& c = head.clusters_[block.index];
      return absl::Span<uint8_t>(PageAddress(c.first_page), RunPages(c) * L.page_bytes());
    }
    case BlockRef::Kind::kPage: {
      auto it = std::lower_bound(head.pages_.begin(), head.pages_.end(), block.first_position,
                                 [](const HeadKv::Page& p, int64_t pos) { return p.first_position < pos; });
      if (it == head.pages_.end() || it->first_position != block.first_position) {
        return absl::NotFoundError(absl::StrCat("layer ", layer, " head ", kv_head, " has no page at position ",
                                                block.first_position));
      }
      return absl::Span<uint8_t>(PageAddress(it->pool_page), L.page_bytes());
    }
  }
  return absl::InvalidArgumentError("unknown block kind");
}

std::vector<BlockRef> SequenceKv::SelectedBlocks(int32_t layer, int32_t kv_head, const HeadSelection& s) const {
  const HeadKv& head = heads_[Index(layer, kv_head)];
  std::vector<BlockRef> out;
  if (s.sink && head.sink_count_ > 0) out.push_back({BlockRef::Kind::kSink, 0, 0});
  for (int32_t c : s.clusters) out.push_back({BlockRef::Kind::kCluster, c, 0});
  for (const PageRows& pr : s.pages) out.push_back({BlockRef::Kind::kPage, pr.page, head.pages_[pr.page].first_position});
  return out;
}

absl::Status SequenceKv::ImportSink(int32_t layer, int32_t kv_head, int32_t count, const uint8_t* bytes) {
  if (layer < 0 || layer >= geometry_.num_layers || kv_head < 0 || kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("import into layer ", layer, " head ", kv_head));
  }
  if (count < 0 || count > geometry_.sink_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("sink of ", count, " tokens; the sink holds at most ",
                                                   geometry_.sink_tokens));
  }
  HeadKv& head = MutableHead(layer, kv_head);
  head.sink_count_ = count;
  if (bytes != nullptr && count > 0) {
    std::memcpy(PageAddress(head.sink_page_), bytes,
                geometry_.layout.PagesFor(geometry_.sink_tokens) * geometry_.layout.page_bytes());
  }
  return absl::OkStatus();
}

absl::Status SequenceKv::ImportCluster(int32_t layer, int32_t kv_head, std::vector<int32_t> positions,
                                       absl::Span<const float> centroid, const uint8_t* bytes) {
  if (layer < 0 || layer >= geometry_.num_layers || kv_head < 0 || kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("import into layer ", layer, " head ", kv_head));
  }
  if (positions.empty()) return absl::InvalidArgumentError("an imported cluster has no tokens");
  if (static_cast<int32_t>(centroid.size()) != geometry_.layout.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("imported centroid has ", centroid.size(), " values, head_dim is ",
                                                   geometry_.layout.head_dim));
  }
  HeadKv& head = MutableHead(layer, kv_head);
  HeadKv::Cluster cluster;
  cluster.num_tokens = static_cast<int32_t>(positions.size());
  cluster.positions = std::move(positions);
  LIVEKV_RETURN_IF_ERROR(AllocateRun(RunPages(cluster), &cluster.key, &cluster.first_page));
  if (bytes != nullptr) std::memcpy(PageAddress(cluster.first_page), bytes, RunPages(cluster) * pool_->page_bytes());
  head.centroids_.insert(head.centroids_.end(), centroid.begin(), centroid.end());
  head.cluster_sizes_.push_back(cluster.num_tokens);
  head.clustered_tokens_ += cluster.num_tokens;
  head.clusters_.push_back(std::move(cluster));
  return absl::OkStatus();
}

absl::Status SequenceKv::ImportPage(int32_t layer, int32_t kv_head, int64_t first_position, int32_t count,
                                    const float* hi, const float* lo, const uint8_t* bytes) {
  if (layer < 0 || layer >= geometry_.num_layers || kv_head < 0 || kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("import into layer ", layer, " head ", kv_head));
  }
  const PageLayout& L = geometry_.layout;
  HeadKv& head = MutableHead(layer, kv_head);
  if (count <= 0 || count > L.page_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("imported page holds ", count, " tokens; pages hold 1 to ",
                                                   L.page_tokens));
  }
  if (!head.pages_.empty()) {
    const HeadKv::Page& last = head.pages_.back();
    if (last.count != L.page_tokens || last.first_position + last.count != first_position) {
      return absl::InvalidArgumentError(absl::StrCat("imported page at position ", first_position,
                                                     " does not follow a complete page ending at ",
                                                     last.first_position + last.count));
    }
  }
  HeadKv::Page page;
  page.first_position = first_position;
  page.count = count;
  LIVEKV_RETURN_IF_ERROR(AllocateRun(1, &page.key, &page.pool_page));
  if (bytes != nullptr) std::memcpy(PageAddress(page.pool_page), bytes, L.page_bytes());
  head.pages_.push_back(page);
  if (count == L.page_tokens) {
    if (bytes != nullptr) {
      Summarise(head, head.num_pages() - 1);
    } else if (hi != nullptr && lo != nullptr) {
      head.page_hi_.insert(head.page_hi_.end(), hi, hi + L.head_dim);
      head.page_lo_.insert(head.page_lo_.end(), lo, lo + L.head_dim);
    } else {
      return absl::InvalidArgumentError("a complete page imported without bytes needs its key bounds");
    }
  }
  return absl::OkStatus();
}

absl::Status SequenceKv::FinishImport(int64_t num_tokens) {
  // Every token is in the sink, a cluster, a positional page, or was dropped (streaming frees old pages): the
  // positional pages must end at num_tokens, and what lies between the sink and the first page is clustered or
  // dropped. Without pages, nothing newer than the clusters can have been dropped.
  for (int32_t l = 0; l < geometry_.num_layers; ++l) {
    for (int32_t h = 0; h < geometry_.num_kv_heads; ++h) {
      const HeadKv& head = heads_[Index(l, h)];
      const int64_t sink = std::min<int64_t>(num_tokens, geometry_.sink_tokens);
      std::string problem;
      if (head.sink_count_ != sink) {
        problem = absl::StrCat("a sink of ", head.sink_count_, " tokens, not ", sink);
      } else if (!head.pages_.empty()) {
        const HeadKv::Page& last = head.pages_.back();
        if (last.first_position + last.count != num_tokens) {
          problem = absl::StrCat("positional pages ending at ", last.first_position + last.count);
        } else if (head.clustered_tokens_ > head.pages_.front().first_position - sink) {
          problem = absl::StrCat(head.clustered_tokens_, " clustered tokens before position ",
                                 head.pages_.front().first_position);
        }
      } else if (sink + head.clustered_tokens_ != num_tokens) {
        problem = absl::StrCat(sink + head.clustered_tokens_, " tokens in the sink and clusters");
      }
      if (!problem.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("imported layer ", l, " head ", h, " has ", problem,
                                                       "; the sequence has ", num_tokens, " tokens"));
      }
    }
  }
  committed_ = num_tokens;
  for (size_t i = 0; i < heads_.size(); ++i) pages_before_[i] = heads_[i].num_pages();
  return absl::OkStatus();
}

}  // namespace livekv
