// File: kvcache/sequence_kv.h
//
// The KV cache of one sequence (a session), for every layer and KV head, stored in pages of a PagePool in the
// head-major page layout. Each (layer, KV head) holds its tokens in blocks, the unit of selection and recall:
//
//   sink      positions [0, sink_tokens): always attended, never clustered or dropped
//   clusters  semantic clusters of keys (ClusterKV): a cluster's tokens lie in one run of consecutive pages, so
//             recalling it is one copy; summarised by the mean of its keys (centroid) and its member positions
//   pages     positional pages of P consecutive positions after the clustered ones, oldest first; the last may
//             be partial. A complete page is summarised by per-channel min/max of its keys (Quest's bounds).
//
// Tokens enter as positional pages (Append/Commit); policies turn the oldest pages into clusters
// (ClusterPages) or drop them (DropPages). Appends are transactional per chunk: Rollback restores the state
// of the last Commit exactly.
//
// Thread-safety: not thread-safe; one writer, and readers only between writes. Page bytes stay valid until the
// block is clustered, dropped, or the sequence is destroyed.
#ifndef LIVEKV_KVCACHE_SEQUENCE_KV_H_
#define LIVEKV_KVCACHE_SEQUENCE_KV_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/kv_run.h"
#include "kvcache/kmeans.h"
#include "kvcache/page_layout.h"
#include "kvcache/page_pool.h"

namespace livekv {

class ThreadPool;

struct KvGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  PageLayout layout;  // page_tokens, head_dim, dtype
  int32_t sink_tokens = 16;

  absl::Status Validate() const;
  // Bytes of K and V per token over all layers and heads.
  size_t BytesPerToken() const { return 2 * layout.row_bytes() * num_layers * num_kv_heads; }
};

// Rows [begin, end) of positional page `page`.
struct PageRows {
  int32_t page = 0;
  int32_t begin = 0;
  int32_t end = 0;
};

// A clustering of the oldest positional pages of one (layer, KV head): which tokens (by position) form each new
// cluster, in storage order, and its centroid. Computed by PlanClustering (or by another process: the prefill
// service plans, the KV store applies).
struct ClusterSpec {
  std::vector<int32_t> positions;
  std::vector<float> centroid;  // [head_dim]
};
struct HeadClustering {
  int32_t layer = 0;
  int32_t kv_head = 0;
  int32_t num_pages = 0;  // the oldest positional pages it replaces
  std::vector<ClusterSpec> clusters;
};

// One block of a (layer, KV head): the sink, cluster `index`, or the positional page starting at
// `first_position` (pages are named by position because clustering renumbers them).
struct BlockRef {
  enum class Kind : uint8_t { kSink, kCluster, kPage };
  Kind kind = Kind::kSink;
  int32_t index = 0;
  int64_t first_position = 0;
};

// The blocks one KV head attends to.
struct HeadSelection {
  bool sink = true;
  std::vector<int32_t> clusters;  // ascending
  std::vector<PageRows> pages;    // ascending pages
};

class HeadKv {
 public:
  struct Cluster {
    PagePool::Key key = 0;
    uint32_t first_page = 0;  // pool page index of the run
    int32_t num_tokens = 0;
    std::vector<int32_t> positions;  // of the member tokens, in storage order
  };
  struct Page {
    PagePool::Key key = 0;
    uint32_t pool_page = 0;
    int64_t first_position = 0;
    int32_t count = 0;  // committed rows
  };

  int32_t sink_count() const { return sink_count_; }
  int32_t num_clusters() const { return static_cast<int32_t>(clusters_.size()); }
  const Cluster& cluster(int32_t c) const { return clusters_[c]; }
  const float* centroids() const { return centroids_.data(); }  // [num_clusters][head_dim], fp32
  const std::vector<int32_t>& cluster_sizes() const { return cluster_sizes_; }
  int64_t clustered_tokens() const { return clustered_tokens_; }

  int32_t num_pages() const { return static_cast<int32_t>(pages_.size()); }
  const Page& page(int32_t i) const { return pages_[i]; }
  // Per-channel key bounds of the complete pages, [num_complete_pages][head_dim]; page i < num_complete_pages().
  int32_t num_complete_pages() const { return static_cast<int32_t>(page_hi_.size() / head_dim_); }
  const float* page_hi() const { return page_hi_.data(); }
  const float* page_lo() const { return page_lo_.data(); }
  int64_t positional_tokens() const;  // committed rows in pages

 private:
  friend class SequenceKv;
  int32_t head_dim_ = 0;
  // Sink: one run of pages, rows = positions.
  PagePool::Key sink_key_ = 0;
  uint32_t sink_page_ = 0;
  int32_t sink_count_ = 0;
  std::vector<Cluster> clusters_;
  std::vector<float> centroids_;
  std::vector<int32_t> cluster_sizes_;
  int64_t clustered_tokens_ = 0;
  std::vector<Page> pages_;
  std::vector<float> page_hi_, page_lo_;
};

class SequenceKv {
 public:
  // Every page comes from `pool`, which must outlive the sequence and have page_bytes == layout.page_bytes().
  static absl::StatusOr<std::unique_ptr<SequenceKv>> Create(const KvGeometry& geometry, PagePool* pool);
  ~SequenceKv();  // erases every pool entry of the sequence
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;

  const KvGeometry& geometry() const { return geometry_; }
  int64_t num_tokens() const { return committed_; }
  const HeadKv& head(int32_t layer, int32_t kv_head) const { return heads_[Index(layer, kv_head)]; }

  // Appends rows for `layer` at positions num_tokens() + (rows already appended to the layer since the last
  // commit). k, v: [n][num_kv_heads][head_dim] host memory of `dtype` (any float type; converted to the layout's).
  // RESOURCE_EXHAUSTED when the pool is full; then the layer's appended rows are as before the call.
  absl::Status Append(int32_t layer, const void* k, const void* v, int64_t n, DType dtype);
  // Makes n appended rows of every layer part of the sequence and summarises pages that became complete.
  // FAILED_PRECONDITION when a layer appended a different number of rows.
  absl::Status Commit(int64_t n);
  // Drops everything appended since the last commit.
  void Rollback();

  // Replaces the oldest `num_pages` positional pages of every KV head of `layer` (all committed; the last may be
  // partial) by `num_clusters` k-means clusters of their keys (fewer when there are fewer tokens; empty clusters
  // are dropped). Heads are clustered in parallel on `threads` when given. Equivalent to PlanClustering followed
  // by ApplyClustering.
  absl::Status ClusterPages(int32_t layer, int32_t num_pages, int32_t num_clusters, const KMeansOptions& kmeans,
                            ThreadPool* threads);
  // Computes that clustering for every head of `layer` without changing the sequence.
  absl::StatusOr<std::vector<HeadClustering>> PlanClustering(int32_t layer, int32_t num_pages, int32_t num_clusters,
                                                             const KMeansOptions& kmeans, ThreadPool* threads) const;
  // Applies clusterings: each one's positions must be exactly the tokens of its pages (INVALID_ARGUMENT naming the
  // head otherwise), and the heads of one layer must be clustered alike. Rows move byte for byte. All or nothing:
  // RESOURCE_EXHAUSTED when the pool cannot hold the new runs, and then nothing changed.
  absl::Status ApplyClustering(const std::vector<HeadClustering>& clusterings);
  // Frees the oldest `num_pages` positional pages of every head of every layer (streaming's drop).
  absl::Status DropPages(int32_t num_pages);

  // Appends the runs of the selected blocks of (layer, kv_head) to `runs`, in order sink, clusters, pages.
  void AppendRuns(int32_t layer, int32_t kv_head, const HeadSelection& selection, std::vector<KvRun>* runs) const;
  // A selection of every committed token of (layer, kv_head).
  HeadSelection SelectAll(int32_t layer, int32_t kv_head) const;
  // Tokens and payload bytes (K and V rows) a selection covers.
  int64_t SelectionTokens(int32_t layer, int32_t kv_head, const HeadSelection& s) const;
  // Positions of the tokens a selection covers (for tests and attention-mass accounting), in run order.
  std::vector<int64_t> SelectionPositions(int32_t layer, int32_t kv_head, const HeadSelection& s) const;

  // Bytes of pool pages the sequence holds.
  size_t pool_bytes() const;

  // The run of pages holding a block (K then V rows per page, as stored), for copying it out or, in a mirror,
  // filling it in. NOT_FOUND naming the block when it does not exist (an unknown cluster, or a page clustered or
  // dropped since). Valid until the block is clustered, dropped, or the sequence destroyed.
  absl::StatusOr<absl::Span<uint8_t>> BlockBytes(int32_t layer, int32_t kv_head, const BlockRef& block) const;
  // Blocks that a selection covers, in AppendRuns order.
  std::vector<BlockRef> SelectedBlocks(int32_t layer, int32_t kv_head, const HeadSelection& selection) const;

  // Rebuilding a sequence from another one's blocks (the services' local mirrors of a session). On an empty,
  // freshly created sequence: import every head's blocks in order (sink, clusters, pages oldest first), then
  // FinishImport. `bytes` may be null to reserve the block's pages without filling them (a mirror that recalls
  // blocks lazily); then page bounds come from `hi`/`lo` (complete pages only; null for a partial page).
  absl::Status ImportSink(int32_t layer, int32_t kv_head, int32_t count, const uint8_t* bytes);
  absl::Status ImportCluster(int32_t layer, int32_t kv_head, std::vector<int32_t> positions,
                             absl::Span<const float> centroid, const uint8_t* bytes);
  absl::Status ImportPage(int32_t layer, int32_t kv_head, int64_t first_position, int32_t count, const float* hi,
                          const float* lo, const uint8_t* bytes);
  // Declares the imported sequence complete with `num_tokens` tokens. INVALID_ARGUMENT when a head's blocks do
  // not account for exactly that many tokens.
  absl::Status FinishImport(int64_t num_tokens);

 private:
  SequenceKv(const KvGeometry& geometry, PagePool* pool);
  size_t Index(int32_t layer, int32_t h) const { return static_cast<size_t>(layer) * geometry_.num_kv_heads + h; }
  uint8_t* PageAddress(uint32_t pool_page) const;
  absl::Status AllocateRun(uint32_t pages, PagePool::Key* key, uint32_t* first_page);
  void FreeRun(PagePool::Key key, uint32_t pages);
  uint32_t RunPages(const HeadKv::Cluster& c) const {
    return static_cast<uint32_t>(geometry_.layout.PagesFor(c.num_tokens));
  }
  void Summarise(HeadKv& head, int32_t page_index);
  absl::StatusOr<HeadClustering> PlanHead(int32_t layer, int32_t h, int32_t num_pages, int32_t num_clusters,
                                          const KMeansOptions& kmeans) const;
  absl::Status ValidateClustering(const HeadClustering& c) const;
  HeadKv& MutableHead(int32_t layer, int32_t h) { return heads_[Index(layer, h)]; }

  const KvGeometry geometry_;
  PagePool* const pool_;
  std::vector<HeadKv> heads_;          // [layer][kv_head]
  int64_t committed_ = 0;
  std::vector<int64_t> pending_;       // per layer: rows appended since the last commit
  std::vector<int32_t> pages_before_;  // per (layer, head): positional pages at the last commit
  std::atomic<size_t> pool_bytes_{0};  // updated by parallel clustering
};

}  // namespace livekv

#endif  // LIVEKV_KVCACHE_SEQUENCE_KV_H_
