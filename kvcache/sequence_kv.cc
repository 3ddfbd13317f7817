#include "kvcache/sequence_kv.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"

namespace livekv {
namespace {

// Converts one row of `n` elements between float types (same type: a copy).
void ConvertRow(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * DTypeSize(st));
  } else if (dt == DType::kF32) {
    ConvertToF32(src, st, n, static_cast<float*>(dst));
  } else if (st == DType::kF32) {
    ConvertFromF32(static_cast<const float*>(src), n, dt, dst);
  } else {
    std::vector<float> tmp(n);
    ConvertToF32(src, st, n, tmp.data());
    ConvertFromF32(tmp.data(), n, dt, dst);
  }
}

}  // namespace

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
      ConvertRow(ks + src, dtype, L.KRow(page, row), L.dtype, d);
      ConvertRow(vs + src, dtype, L.VRow(page, row), L.dtype, d);
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
    ConvertRow(L.KRow(page, r), L.dtype, row.data(), DType::kF32, d);
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
  if (num_pages == 0) return absl::OkStatus();
  std::vector<absl::Status> status(heads);
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) status[h] = ClusterHead(heads_[Index(layer, h)], num_pages, num_clusters, kmeans);
  };
  if (threads != nullptr) {
    threads->ParallelFor(heads, work);
  } else {
    work(0, heads);
  }
  for (const absl::Status& s : status) LIVEKV_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

absl::Status SequenceKv::ClusterHead(HeadKv& head, int32_t num_pages, int32_t num_clusters,
                                     const KMeansOptions& kmeans) {
  const PageLayout& L = geometry_.layout;
  const int64_t d = L.head_dim;
  // Gather the pages' keys as fp32, with their positions and where each row lives.
  int64_t n = 0;
  for (int32_t p = 0; p < num_pages; ++p) n += head.pages_[p].count;
  std::vector<float> keys(n * d);
  std::vector<int64_t> positions(n);
  std::vector<const uint8_t*> row_page(n);
  std::vector<int32_t> row_index(n);
  int64_t i = 0;
  for (int32_t p = 0; p < num_pages; ++p) {
    const HeadKv::Page& page = head.pages_[p];
    const uint8_t* addr = PageAddress(page.pool_page);
    for (int32_t r = 0; r < page.count; ++r, ++i) {
      ConvertRow(L.KRow(addr, r), L.dtype, &keys[i * d], DType::kF32, d);
      positions[i] = page.first_position + r;
      row_page[i] = addr;
      row_index[i] = r;
    }
  }
  std::vector<HeadKv::Cluster> made;
  std::vector<float> made_centroids;
  std::vector<int32_t> made_sizes;
  if (n > 0) {
    KMeansOptions opts = kmeans;
    opts.num_clusters = static_cast<int32_t>(std::min<int64_t>(std::max(1, num_clusters), n));
    LIVEKV_ASSIGN_OR_RETURN(KMeansResult km, KMeans(keys.data(), n, static_cast<int32_t>(d), opts));
    // Members of each cluster in position order, so a cluster's run is ordered like the sequence.
    std::vector<std::vector<int64_t>> members(opts.num_clusters);
    for (int64_t t = 0; t < n; ++t) members[km.labels[t]].push_back(t);
    for (int32_t c = 0; c < opts.num_clusters; ++c) {
      if (members[c].empty()) continue;
      HeadKv::Cluster cluster;
      cluster.num_tokens = static_cast<int32_t>(members[c].size());
      absl::Status s = AllocateRun(static_cast<uint32_t>(L.PagesFor(cluster.num_tokens)), &cluster.key,
                                   &cluster.first_page);
      if (!s.ok()) {
        for (const HeadKv::Cluster& m : made) FreeRun(m.key, RunPages(m));
        return s;
      }
      uint8_t* run = PageAddress(cluster.first_page);
      for (int32_t j = 0; j < cluster.num_tokens; ++j) {
        const int64_t t = members[c][j];
        uint8_t* page = run + (j / L.page_tokens) * L.page_bytes();
        std::memcpy(L.KRow(page, j % L.page_tokens), L.KRow(row_page[t], row_index[t]), L.row_bytes());
        std::memcpy(L.VRow(page, j % L.page_tokens), L.VRow(row_page[t], row_index[t]), L.row_bytes());
        cluster.positions.push_back(static_cast<int32_t>(positions[t]));
      }
      made_centroids.insert(made_centroids.end(), km.centroids.begin() + c * d, km.centroids.begin() + (c + 1) * d);
      made_sizes.push_back(cluster.num_tokens);
      made.push_back(std::move(cluster));
    }
  }
  // Commit: the clusters replace the pages.
  for (HeadKv::Cluster& c : made) head.clusters_.push_back(std::move(c));
  head.centroids_.insert(head.centroids_.end(), made_centroids.begin(), made_centroids.end());
  head.cluster_sizes_.insert(head.cluster_sizes_.end(), made_sizes.begin(), made_sizes.end());
  head.clustered_tokens_ += n;
  for (int32_t p = 0; p < num_pages; ++p) FreeRun(head.pages_[p].key, 1);
  head.pages_.erase(head.pages_.begin(), head.pages_.begin() + num_pages);
  const int32_t summarised = std::min(num_pages, head.num_complete_pages());
  head.page_hi_.erase(head.page_hi_.begin(), head.page_hi_.begin() + summarised * d);
  head.page_lo_.erase(head.page_lo_.begin(), head.page_lo_.begin() + summarised * d);
  const size_t idx = &head - heads_.data();
  pages_before_[idx] = head.num_pages();
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
