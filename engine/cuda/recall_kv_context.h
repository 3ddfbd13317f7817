// File: engine/cuda/recall_kv_context.h
//
// The GPU recall path (ARCHITECTURE.md §3; FreeKV's hybrid layout and speculative, double-buffered recall): a
// KvContext for the CUDA engine whose sparse layers keep their KV in pinned host memory and bring to the device
// only what each decode step's selection names.
//
// Where the KV lives, per layer:
//   dense layers (policy.dense_layers)  every token on the device, head-major [kv_heads][capacity][head_dim];
//   sparse layers                       the sink and the unclustered recent tokens ("tail") on the device, same
//                                       layout; older tokens as semantic clusters (ClusterKV) in a PagePool over
//                                       CudaPinnedAllocator: each cluster is a run of kvcache/page_layout.h pages
//                                       (K rows then V rows per page), so recalling it is one contiguous copy; the
//                                       clusters of one (layer, KV head) clustering lie back to back in one run.
//                                       Cluster centroids (fp32) and sizes live on the device for selection.
//
// A decode step of a sparse layer attends to: the tail (always, as the clusterkv policy does), plus the clusters
// the selection picked, greedily by pooled q·centroid score within budget - tail tokens (kvcache/selection.h's
// rule, run on the GPU by cuda/ops/selection.h). Picked clusters are looked up in a per-layer device cache of
// pages (O(1) arrays: cluster -> cached pages, LRU list over clusters, free list of pages): hits are used in place,
// misses are copied from the pinned pages into free cache pages (options.copy: an SM gather kernel reading the
// pinned pages directly — the default, it reaches the PCIe rate at page-sized runs — bulk copies by the Tensor
// Memory Accelerator, or the copy engine through cudaMemcpyBatchAsync / cudaMemcpyAsync, adjacent runs merged), and
// attention reads the cache pages.
//
// Speculation (FreeKV, options.speculative): at step t, layer ℓ's attention also stores its query q_t in a
// per-layer snapshot (ContextKv::query_copy), and the selection for step t+1 is computed from it on a select stream
// after that attention (an event recorded at Append), its result written into mapped pinned memory; a worker thread
// then looks the clusters up, and issues the recall of the misses on one of two recall streams (layers alternate),
// after the same event — recall never overwrites cache pages an in-flight attention reads. Attention of layer ℓ
// at step t+1 waits on that recall's event (not on the host), which also orders it after the selection that read
// the snapshot it overwrites. So the attention at step t+1 uses the clusters selected with q_t: pure speculation,
// no correction (FreeKV's per-head correction belongs to the decode service, later). The first decode step after a
// clustering (and every step without speculation) selects synchronously with its own query.
//
// Clustering (ClusterKV): at a settle point (FinishAppend, a decode step's start, or — announced with
// ExpectInputEnd — the end of the chunk that completes the input), the tokens older than the recent window are
// clustered with the GPU k-means (cuda/ops/kmeans.h) into ceil(tokens / tokens_per_cluster) clusters (at least
// window_clusters), once cluster_window of them have gathered. With ExpectInputEnd, each sparse layer's k-means is
// launched on a side stream right after the layer's Append (overlapping the remaining layers of the prefill, as
// ClusterKV does); as soon as a layer's k-means is done (checked at each later Append), its members are gathered on
// the device into page runs and copied to the pinned pool, still during the prefill; Commit waits for those copies
// and publishes the clusters. Differences from kvcache's SequenceKv: empty clusters are kept (size 0, never
// recalled), so every KV head of a layer has the same number of clusters.
//
// Prefill chunks (more than one token) attend to everything: the tail on the device and, if a layer was already
// clustered, its clusters read straight from pinned memory (zero-copy, slow; only for inputs fed in several
// chunks after a settle point).
//
// Thread-safety: one sequence, one thread (the KvContext contract); the context owns its worker thread.
#ifndef LIVEKV_ENGINE_CUDA_RECALL_KV_CONTEXT_H_
#define LIVEKV_ENGINE_CUDA_RECALL_KV_CONTEXT_H_

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "cuda/runtime/buffers.h"
#include "cuda/runtime/cuda_allocator.h"
#include "cuda/runtime/stream.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/kv_context.h"
#include "engine/model_config.h"
#include "kvcache/page_layout.h"
#include "kvcache/page_pool.h"
#include "kvcache/policy_options.h"

namespace livekv {

// How missed cluster pages reach the device cache.
enum class RecallCopy {
  kGather,  // one SM gather kernel per layer and step reading the pinned pages (zero-copy; cuda/ops/kv_layout.h)
  kBulk,    // the same run list copied by the Tensor Memory Accelerator (GatherRunsBulk, gather_ctas CTAs; sm_90)
  kBatch,   // copy engine: one cudaMemcpyBatchAsync per layer and step
  kPerRun,  // copy engine: one cudaMemcpyAsync per (merged) run
};

struct RecallOptions {
  // kind clusterkv (or full: every layer dense), budget, sink, window, page_tokens, cluster_window,
  // tokens_per_cluster, window_clusters, kmeans_iterations, kmeans_seed, pooling, dense_layers. kv_dtype must be
  // BF16 (the CUDA engine's KV).
  PolicyOptions policy;
  bool speculative = true;
  // Pinned host memory: an arena for this many tokens per (sparse layer, KV head), times `host_slack` for partly
  // filled last pages, allocated (pinned) up front; clusterings that do not fit get further arenas sized to them
  // (at least 64 MiB) on demand. 0: arenas on demand only (exactly what the clusterings need, pinned when they
  // are stored, which adds the pinning time to that settle point).
  int64_t max_tokens = 0;
  double host_slack = 1.7;
  // Device cache per sparse layer, in tokens per KV head (0: 4 x budget). Selections beyond it are read
  // zero-copy from pinned memory.
  int32_t cache_tokens_per_head = 0;
  RecallCopy copy = RecallCopy::kGather;
  // The gather kernel (kGather): CTAs and threads per CTA. Its outstanding PCIe loads (ctas x threads x 64 B) slow
  // the kernels beside it (the step's weight stream) far more than the bytes it moves: few CTAs, enough for the link.
  // H100 (kernels_bench, engine_bench; docs/gpu.md): 8 x 256 moves 0.54-0.89 of pinned H2D alone (machine to
  // machine) and leaves a GEMV beside it 0.86-0.88 of its rate (32 x 512: 0.92-0.95 and 0.60-0.62); the 32k sparse
  // step 9.4 -> 7.5 ms.
  int32_t gather_ctas = 8;
  int32_t gather_threads = 256;
  // The select and recall streams at the device's highest priority. The decode step's compute stream always has
  // its next kernel pending (programmatic launch), so at equal priority the speculative selection and the recall
  // for step t+1 get SMs only when that chain drains, at the step's end, and the step waits for them. false: the
  // default priority (kept for comparison).
  bool prioritize_recall = true;
  // K-means convergence: a clustering stops before policy.kmeans_iterations once an assignment changes at most
  // this fraction of its labels (cuda::KMeansRun's stop_fraction; decided on the device, no host sync). 0: always
  // run every iteration.
  double kmeans_stop_fraction = 1e-3;
};

struct RecallCounters {
  int64_t decode_steps = 0;
  int64_t sparse_selections = 0;       // (layer, step) pairs that selected clusters
  int64_t sync_selections = 0;         // of those, made synchronously with the step's own query
  int64_t clusters_selected = 0;       // (head, cluster) pairs attended
  int64_t clusters_hit = 0;            // found in the device cache
  int64_t clusters_recalled = 0;       // copied host -> device
  int64_t clusters_zero_copy = 0;      // read from pinned memory (cache full)
  int64_t bytes_recalled = 0;
  int64_t copies = 0;                  // copy descriptors issued (after merging adjacent runs)
  double wait_seconds = 0;             // main thread waiting for the worker's recall issue
  int64_t clusterings = 0;             // layer clusterings done
  double kmeans_ms = 0;                // GPU time of the k-means runs (events on the side stream)
  double clustering_finish_seconds = 0;  // host time storing + publishing clusterings (stores overlap the prefill)
};

class CudaRecallKvContext : public KvContext {
 public:
  // `backend` must outlive the context. INVALID_ARGUMENT for invalid options, a policy other than clusterkv or
  // full, non-BF16 KV, or clusterkv on a sliding-window model; RESOURCE_EXHAUSTED when the pinned pool, the device
  // caches or the buffers do not fit.
  static absl::StatusOr<std::unique_ptr<CudaRecallKvContext>> Create(const ModelConfig& config,
                                                                     const RecallOptions& options,
                                                                     CudaBackend* backend);
  ~CudaRecallKvContext() override;

  int64_t num_tokens() const override { return committed_; }
  absl::Status Select(int layer, TensorView q, ContextKv* ctx) override;
  absl::Status Append(int layer, TensorView k, TensorView v) override;
  absl::Status Commit(int64_t n) override;
  void Rollback() override;

  // The input (prompt) ends at position `end`: the chunk that reaches it clusters each sparse layer on the side
  // stream right after that layer's Append, and the clusters are stored at its Commit.
  void ExpectInputEnd(int64_t end) { input_end_ = end; }
  // A settle point: clusters every sparse layer that has gathered enough old tokens, now.
  absl::Status FinishAppend();

  const RecallCounters& counters() const { return counters_; }
  void ResetCounters() { counters_ = RecallCounters(); }
  // Benchmarks switch these between steps (from the next step on).
  void set_speculative(bool on);
  void set_copy(RecallCopy copy) { copy_ = copy; }
  void set_gather(int32_t ctas, int32_t threads) {
    gather_ctas_ = std::max<int32_t>(1, ctas);
    gather_threads_ = std::clamp<int32_t>(threads / 32 * 32, 32, 1024);
  }

  // Diagnostics (benchmarks): with the timeline on, timing events mark each layer of every decode step on the
  // compute, select and recall streams; LastStepTimeline() reads those of the last step (synchronizing the device),
  // in milliseconds from the step's first Select. Off by default (the events cost a few microseconds per layer).
  struct LayerTimeline {
    int layer = 0;
    bool sparse = false;
    double queries = -1;       // the compute stream reached the layer's Select (its queries exist)
    double attend = -1;        // ... and the recall the attention waits for had landed (sparse layers)
    double attended = -1;      // the attention done (the layer's Append)
    double select_begin = -1;  // the speculative selection for the next step, on the select stream
    double select_end = -1;    //   (its result copied to the host); -1: none this step
    double recall_begin = -1;  // the recall of its misses, on a recall stream (after the attention); -1: none
    double recall_end = -1;
  };
  void set_timeline(bool on);
  absl::StatusOr<std::vector<LayerTimeline>> LastStepTimeline() const;

  // What the last decode step of `layer` attended for KV head `head`, page by page of each selected cluster (for
  // tests): the cluster, the page's tokens, where attention read it on the device and the pinned page it came from.
  struct AttendedCluster {
    int32_t cluster = 0;
    int32_t page = 0;                 // page index within the cluster's run
    int32_t tokens = 0;               // rows used in this page
    const uint8_t* device = nullptr;  // a cache page (or the pinned page itself when read zero-copy)
    const uint8_t* host = nullptr;    // the pinned page
    size_t bytes = 0;                 // the page's span: K rows and V rows up to the last used V row
  };
  // With `planned`: what the next step will attend instead (the speculative selection and recall made during the
  // last step; valid once that recall has completed on the device).
  std::vector<AttendedCluster> LastAttended(int layer, int head, bool planned = false) const;
  // Clusters per KV head of `layer` (0 for dense layers and unclustered ones), tail rows on the device, bytes of
  // the pinned pool in use.
  int32_t num_clusters(int layer) const;
  int64_t tail_rows(int layer) const;
  size_t host_bytes_in_use() const;
  size_t device_bytes() const;

 private:
  struct Layer;
  // A selection placed for attention: per head the clusters, each with its pages (device cache pages, or the
  // pinned pages when read zero-copy) in `pages`.
  struct Placed {
    int32_t cluster;
    int32_t tokens;
    int32_t page_begin;
  };
  struct Placement {
    std::vector<std::vector<Placed>> heads;
    std::vector<const uint8_t*> pages;
    void Reset(int32_t hkv) {
      heads.resize(hkv);
      for (auto& h : heads) h.clear();
      pages.clear();
    }
  };
  CudaRecallKvContext(const ModelConfig& config, const RecallOptions& options, CudaBackend* backend);
  absl::Status Init();
  bool Sparse(int layer) const;
  absl::Status GrowTail(Layer& L, int64_t rows);
  // Clustering: how many old tokens a layer would cluster now (0: not due).
  int64_t DueTokens(const Layer& L, int64_t rows) const;
  absl::Status LaunchClustering(int layer, int64_t older, cudaEvent_t after);
  // A layer's clustering ends in two steps. StoreClustering, once its k-means is done (at a later layer's Append,
  // during the prefill, or at the latest at Commit): the page layout and the gather of its KV into cluster order,
  // copied to pinned memory on the cluster stream. PublishClustering, at Commit, after one wait for every stored
  // copy: the clusters become the layer's, and the clustered rows leave its tail. FinishClusterings does both for
  // `layers` (storing those not stored yet); StoreFinishedClusterings stores every active one whose k-means is done.
  absl::Status StoreClustering(int layer);
  absl::Status PublishClustering(int layer);
  absl::Status FinishClusterings(const std::vector<int>& layers);
  absl::Status StoreFinishedClusterings();
  absl::Status ClusterDueLayers();
  // Selection and recall.
  absl::Status SelectNow(int layer, const void* q, int64_t cluster_budget, std::vector<int32_t>* chosen_out);
  absl::Status Recall(Layer& L, const int32_t* chosen, const int32_t* count, int32_t stride, Placement* placed,
                      cudaStream_t stream, cudaEvent_t wait);
  // Speculation for the next step: the attention about to be enqueued stores its query in L's snapshot (ctx's
  // query_copy); Append then enqueues the selection (EnqueueSpeculativeSelect, after the attention) and posts the
  // worker's recall job.
  absl::Status ArmSpeculativeSelect(Layer& L, int64_t cluster_budget, ContextKv* ctx);
  // L's speculative selection from its query snapshot under L.select_budget, on the select stream after `after`.
  absl::Status EnqueueSpeculativeSelect(Layer& L, cudaEvent_t after);
  // Enqueues scoring of L's centroids with the one-row query `q` and the greedy pick under `cluster_budget` on
  // `stream`, with select_ws_[slot] as workspace (slot 0: the speculative select stream, 1: synchronous): two
  // launches (cuda::FusedSelect) where they apply, else ScoreBlocks and SelectBlocks. The result (SelLayout) goes to
  // `out`, device memory or mapped pinned memory.
  absl::Status EnqueueSelect(Layer& L, const void* q, int64_t cluster_budget, int slot, uint8_t* out,
                             cudaStream_t stream);
  // A run of `pages` pinned pages (owned, never evicted) from the arenas, adding an arena when none has room; its
  // arena and key free it again (PagePool::Erase).
  struct HostRun {
    uint8_t* data = nullptr;
    PagePool* pool = nullptr;
    PagePool::Key key = 0;
  };
  absl::StatusOr<HostRun> AllocateHostRun(uint32_t pages);
  void WorkerLoop();
  void Post(int layer);
  absl::Status WaitJob(int layer);
  absl::Status DrainJobs();

  const ModelConfig config_;
  const RecallOptions options_;
  CudaBackend* const backend_;
  const PageLayout layout_;
  const int32_t hkv_, hq_, d_;
  bool speculative_;
  RecallCopy copy_;
  int32_t gather_ctas_;
  int32_t gather_threads_;
  int64_t committed_ = 0;
  int64_t input_end_ = -1;
  bool chunk_started_ = false;
  bool decode_chunk_ = false;
  RecallCounters counters_;
  bool timeline_ = false;
  cuda::Event step_begin_;  // timing event at the decode step's first Select (timeline)

  cuda::CudaPinnedAllocator pinned_alloc_{/*mapped=*/true};
  cuda::CudaDeviceAllocator device_alloc_;
  std::vector<std::unique_ptr<PagePool>> host_pools_;  // pinned arenas of cluster runs
  std::vector<std::unique_ptr<Layer>> layers_;
  cuda::Stream select_stream_, cluster_stream_;
  cuda::Stream recall_streams_[2];
  // Selection workspaces: one for the select stream, one for synchronous selection on the compute stream; the
  // synchronous selection's result (the speculative one goes to each layer's mapped spec_out).
  cuda::DeviceBuffer select_ws_[2], select_out_;
  size_t select_ws_bytes_ = 0, select_out_bytes_ = 0;
  int32_t max_clusters_ = 0;  // largest clusters per head of any layer (sizes the selection buffers)
  // Clustering scratch (cluster stream).
  cuda::DeviceBuffer kmeans_ws_, gather_stage_, gather_index_;
  cuda::PinnedHostBuffer gather_index_host_[2];  // alternate layers' gather indices (host side)
  cuda::Event gather_index_uploaded_[2];         // ... each recorded after its upload
  int gather_slot_ = 0;
  cuda::DeviceBuffer compact_scratch_;
  uint64_t next_cache_key_ = 1;

  // Worker thread: recall jobs, one per layer and step at most.
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> jobs_;
  bool stop_ = false;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_CUDA_RECALL_KV_CONTEXT_H_
