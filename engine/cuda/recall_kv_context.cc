#include "engine/cuda/recall_kv_context.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "cuda/ops/kmeans.h"
#include "cuda/ops/kv_layout.h"
#include "cuda/ops/selection.h"
#include "cuda/runtime/cuda_status.h"

namespace livekv {
namespace {

using bf16 = __nv_bfloat16;
using Clock = std::chrono::steady_clock;

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

// The selection kernels' outputs, one block: count [hkv] int32, taken [hkv] int64, chosen [hkv][C] int32.
struct SelLayout {
  size_t count_off = 0, taken_off = 0, chosen_off = 0, bytes = 0;
};
SelLayout SelectLayout(int32_t hkv, int32_t c) {
  SelLayout l;
  l.taken_off = Align256(static_cast<size_t>(hkv) * 4);
  l.chosen_off = l.taken_off + Align256(static_cast<size_t>(hkv) * 8);
  l.bytes = l.chosen_off + Align256(static_cast<size_t>(hkv) * std::max(c, 1) * 4);
  return l;
}

cuda::ScorePooling Pooling(GroupPooling p) {
  return p == GroupPooling::kMeanScore ? cuda::ScorePooling::kMeanScore : cuda::ScorePooling::kMeanSoftmax;
}

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

struct CudaRecallKvContext::Layer {
  struct ClusterRef {
    const uint8_t* host = nullptr;  // first pinned page of the run
    int32_t tokens = 0;
    uint64_t cache_key = 0;
  };
  struct JobStats {
    int64_t selected = 0, hit = 0, recalled = 0, zero_copy = 0, bytes = 0, copies = 0;
  };
  struct KMeans {
    bool active = false;
    bool stored = false;  // StoreClustering done: the clustered KV is on its way to host_run
    int64_t older = 0;
    int32_t c = 0;
    HostRun host_run;               // the clusters' pinned pages, head by head, cluster by cluster
    std::vector<int64_t> page_off;  // [hkv * c + 1]: where each (head, cluster)'s pages start in host_run
    cuda::DeviceBuffer centroids, labels, sizes, init_rows;
    cuda::PinnedHostBuffer labels_host, sizes_host, init_host;
    cuda::Event start, end, done;
  };

  int index = 0;
  bool dense = true;
  // The tail: head-major [hkv][cap][d] K and V on the device. Rows [0, sink) are the sink, the rest consecutive
  // recent positions (consecutive with the sink until the first clustering).
  Tensor tail_k, tail_v;
  int64_t cap = 0, rows = 0, pending = 0;
  bool clustered = false;
  // Clusters: [head][c] refs, sizes [head * C + c], centroids and sizes on the device.
  int32_t c = 0;
  std::vector<std::vector<ClusterRef>> clusters;
  std::vector<int32_t> sizes;
  int64_t clustered_tokens = 0;
  cuda::DeviceBuffer centroids, dev_sizes;
  // Device cache of recalled clusters: pages, a free list, and per (head, cluster) entry its pages and its place
  // in an LRU list (intrusive, by entry index = head * stride + cluster). O(1) per lookup, insert and eviction.
  struct CacheEntry {
    int32_t prev = -1, next = -1;
    uint32_t stamp = 0;  // the recall that last used it (entries of the recall in progress are not evicted)
    bool cached = false;
    std::vector<int32_t> pages;
  };
  cuda::DeviceBuffer cache;
  int32_t cache_pages = 0;
  std::vector<int32_t> free_pages;
  std::vector<CacheEntry> entries;
  int32_t stride = 0, lru_head = -1, lru_tail = -1;
  uint32_t stamp = 0;
  // Placements: what the current step's attention reads, and what the speculative recall prepared for the next.
  Placement current, next;
  // Recall descriptors for the gather kernel, in mapped pinned memory (the kernel reads them directly); two
  // buffers used alternately, each reused only after the gather that read it (gather_done) has finished.
  cuda::PinnedHostBuffer desc[2];
  cuda::Event gather_done[2];
  int desc_buf = 0;
  std::vector<cuda::CopyRun> runs;
  // Events (see the header's timeline).
  cuda::Event attn_done, sel_done, recall_done, gathered;
  // Timing events of the diagnostic timeline (LayerTimeline's fields, in order), made when it is switched on, and
  // which of the step's marks were recorded.
  enum Mark { kQueries, kAttend, kAttended, kSelectBegin, kSelectEnd, kRecallBegin, kRecallEnd, kMarks };
  cuda::Event marks[kMarks];
  bool marked[kMarks] = {};
  void Mark(bool on, int m, cudaStream_t s) {
    if (!on || marks[m].get() == nullptr) return;
    marked[m] = marks[m].Record(s).ok();
  }

  void Unlink(int32_t id) {
    CacheEntry& e = entries[id];
    if (e.prev >= 0) entries[e.prev].next = e.next; else lru_head = e.next;
    if (e.next >= 0) entries[e.next].prev = e.prev; else lru_tail = e.prev;
    e.prev = e.next = -1;
  }
  void PushBack(int32_t id) {
    CacheEntry& e = entries[id];
    e.prev = lru_tail;
    e.next = -1;
    if (lru_tail >= 0) entries[lru_tail].next = id; else lru_head = id;
    lru_tail = id;
  }
  // Drops every cached cluster (after a clustering renumbers the entries).
  void ResetCache(int32_t new_stride, int32_t hkv) {
    stride = new_stride;
    entries.assign(static_cast<size_t>(new_stride) * hkv, CacheEntry());
    lru_head = lru_tail = -1;
    free_pages.resize(cache_pages);
    for (int32_t i = 0; i < cache_pages; ++i) free_pages[i] = cache_pages - 1 - i;  // pop_back takes page 0 first
  }
  // Speculation.
  cuda::DeviceBuffer q_snap;
  cuda::PinnedHostBuffer spec_out;  // mapped: the speculative selection writes it at spec_out_device
  uint8_t* spec_out_device = nullptr;
  bool armed = false, posted = false, spec_ready = false;
  int64_t select_budget = 0;  // the speculative selection's cluster budget (armed)
  bool job_done = false;        // guarded by mu_
  absl::Status job_status;      // guarded by mu_
  JobStats stats;               // written by whichever thread runs the layer's recall
  KMeans km;
};

CudaRecallKvContext::CudaRecallKvContext(const ModelConfig& config, const RecallOptions& options,
                                         CudaBackend* backend)
    : config_(config),
      options_(options),
      backend_(backend),
      layout_(PageLayout{options.policy.page_tokens, static_cast<int32_t>(config.head_dim), DType::kBF16}),
      hkv_(static_cast<int32_t>(config.num_kv_heads)),
      hq_(static_cast<int32_t>(config.num_heads)),
      d_(static_cast<int32_t>(config.head_dim)),
      speculative_(options.speculative),
      copy_(options.copy),
      gather_ctas_(options.gather_ctas),
      gather_threads_(options.gather_threads),
      device_alloc_(backend->device()) {}

absl::StatusOr<std::unique_ptr<CudaRecallKvContext>> CudaRecallKvContext::Create(const ModelConfig& config,
                                                                                 const RecallOptions& options,
                                                                                 CudaBackend* backend) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  LIVEKV_RETURN_IF_ERROR(options.policy.Validate(config.num_layers));
  if (options.policy.kind != PolicyKind::kClusterKv && options.policy.kind != PolicyKind::kFull) {
    return absl::InvalidArgumentError(absl::StrCat("the GPU recall path serves clusterkv or full, not ",
                                                   PolicyKindName(options.policy.kind)));
  }
  if (options.policy.kv_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("the GPU recall path keeps BF16 KV, saw kv_dtype ", DTypeName(options.policy.kv_dtype)));
  }
  if (options.policy.kind == PolicyKind::kClusterKv) {
    if (config.sliding_window > 0) {
      return absl::InvalidArgumentError("policy clusterkv cannot serve a sliding-window model");
    }
    if (config.head_dim != 64 && config.head_dim != 128 && config.head_dim != 256) {
      return absl::InvalidArgumentError(
          absl::StrCat("the GPU k-means clusters head_dim 64, 128 or 256, not ", config.head_dim));
    }
  }
  if (options.max_tokens < 0 || options.host_slack < 1.0 || options.cache_tokens_per_head < 0 ||
      options.gather_ctas <= 0 || options.gather_threads < 32 || options.gather_threads > 1024 ||
      options.gather_threads % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("recall options: max_tokens ", options.max_tokens, ", host_slack ",
                                                   options.host_slack, ", cache_tokens_per_head ",
                                                   options.cache_tokens_per_head, ", gather ",
                                                   options.gather_ctas, " CTAs of ", options.gather_threads,
                                                   " threads"));
  }
  std::unique_ptr<CudaRecallKvContext> c(new CudaRecallKvContext(config, options, backend));
  LIVEKV_RETURN_IF_ERROR(c->Init());
  return c;
}

bool CudaRecallKvContext::Sparse(int layer) const {
  if (options_.policy.kind != PolicyKind::kClusterKv) return false;
  const auto& d = options_.policy.dense_layers;
  return std::find(d.begin(), d.end(), layer) == d.end();
}

absl::Status CudaRecallKvContext::Init() {
  // The clustering stream has the highest priority: a layer's k-means takes the SMs as soon as its keys are
  // appended instead of trailing the prefill's kernels (the work is the same either way; finishing each layer's
  // clustering early bounds how far it lags the prefill, and its elapsed time is its own). The select and recall
  // streams too (options_.prioritize_recall): see RecallOptions.
  int least_priority = 0, greatest_priority = 0;
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority));
  LIVEKV_ASSIGN_OR_RETURN(cluster_stream_, cuda::Stream::Create(/*blocking=*/false, greatest_priority));
  const int recall_priority = options_.prioritize_recall ? greatest_priority : 0;
  LIVEKV_ASSIGN_OR_RETURN(select_stream_, cuda::Stream::Create(/*blocking=*/false, recall_priority));
  for (cuda::Stream& s : recall_streams_) {
    LIVEKV_ASSIGN_OR_RETURN(s, cuda::Stream::Create(/*blocking=*/false, recall_priority));
  }
  int sparse = 0;
  for (int l = 0; l < config_.num_layers; ++l) sparse += Sparse(l);
  if (sparse > 0 && options_.max_tokens > 0) {
    const int64_t per_head = static_cast<int64_t>(std::ceil(static_cast<double>(options_.max_tokens) *
                                                            options_.host_slack / layout_.page_tokens)) + 16;
    PagePool::Options o;
    o.page_bytes = layout_.page_bytes();
    o.capacity_bytes = static_cast<size_t>(per_head) * hkv_ * sparse * o.page_bytes;
    LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, PagePool::Create(&pinned_alloc_, o));
    host_pools_.push_back(std::move(pool));
  }
  const int64_t cache_tokens =
      options_.cache_tokens_per_head > 0 ? options_.cache_tokens_per_head : 4 * int64_t{options_.policy.budget};
  for (cuda::Event& e : gather_index_uploaded_) {
    LIVEKV_ASSIGN_OR_RETURN(e, cuda::Event::Create());
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    auto L = std::make_unique<Layer>();
    L->index = l;
    L->dense = !Sparse(l);
    for (cuda::Event* e : {&L->attn_done, &L->sel_done, &L->recall_done, &L->gathered}) {
      LIVEKV_ASSIGN_OR_RETURN(*e, cuda::Event::Create());
    }
    for (cuda::Event* e : {&L->km.start, &L->km.end}) {
      LIVEKV_ASSIGN_OR_RETURN(*e, cuda::Event::Create(true));
    }
    LIVEKV_ASSIGN_OR_RETURN(L->km.done, cuda::Event::Create());
    L->clusters.resize(hkv_);
    L->current.Reset(hkv_);
    L->next.Reset(hkv_);
    if (!L->dense) {
      // Partly filled last pages: about 1.5 pages per cluster of tokens_per_cluster tokens.
      L->cache_pages = static_cast<int32_t>(
          ((cache_tokens * 3 / 2 + layout_.page_tokens - 1) / layout_.page_tokens + 8) * hkv_);
      LIVEKV_ASSIGN_OR_RETURN(L->cache,
                              cuda::DeviceBuffer::Create(static_cast<size_t>(L->cache_pages) * layout_.page_bytes()));
      L->ResetCache(0, hkv_);
      LIVEKV_ASSIGN_OR_RETURN(L->q_snap, cuda::DeviceBuffer::Create(static_cast<size_t>(hq_) * d_ * 2));
      for (cuda::Event* e : {&L->gather_done[0], &L->gather_done[1]}) {
        LIVEKV_ASSIGN_OR_RETURN(*e, cuda::Event::Create());
      }
    }
    LIVEKV_RETURN_IF_ERROR(GrowTail(*L, 256));
    layers_.push_back(std::move(L));
  }
  worker_ = std::thread([this] { WorkerLoop(); });
  return absl::OkStatus();
}

CudaRecallKvContext::~CudaRecallKvContext() {
  (void)DrainJobs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  (void)backend_->Synchronize();
  for (cuda::Stream* s : {&select_stream_, &cluster_stream_, &recall_streams_[0], &recall_streams_[1]}) {
    if (s->get() != nullptr) (void)s->Synchronize();
  }
  layers_.clear();
  host_pools_.clear();
}

// ---- Tail ----------------------------------------------------------------------------------------------------------

absl::Status CudaRecallKvContext::GrowTail(Layer& L, int64_t need) {
  if (need <= L.cap) return absl::OkStatus();
  const int64_t cap = std::max<int64_t>({need, 2 * L.cap, 256});
  LIVEKV_ASSIGN_OR_RETURN(Tensor k, backend_->Allocate(DType::kBF16, Shape{hkv_, cap, d_}));
  LIVEKV_ASSIGN_OR_RETURN(Tensor v, backend_->Allocate(DType::kBF16, Shape{hkv_, cap, d_}));
  const int64_t keep = L.rows + L.pending;
  const size_t row = layout_.row_bytes();
  if (keep > 0) {
    for (auto [dst, src] : {std::pair<Tensor*, Tensor*>{&k, &L.tail_k}, {&v, &L.tail_v}}) {
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(dst->data(), cap * row, src->data(), L.cap * row, keep * row, hkv_,
                                                    cudaMemcpyDeviceToDevice, backend_->stream()));
    }
  }
  // Freeing the old tail (cudaFree) waits for the device, so no in-flight kernel (a k-means on the side stream
  // included) still reads it.
  L.tail_k = std::move(k);
  L.tail_v = std::move(v);
  L.cap = cap;
  return absl::OkStatus();
}

// ---- KvContext -----------------------------------------------------------------------------------------------------

absl::StatusOr<CudaRecallKvContext::HostRun> CudaRecallKvContext::AllocateHostRun(uint32_t pages) {
  for (auto it = host_pools_.rbegin(); it != host_pools_.rend(); ++it) {
    if ((*it)->stats().largest_free_run_bytes < static_cast<size_t>(pages) * layout_.page_bytes()) continue;
    const PagePool::Key key = (*it)->NewKey();
    absl::StatusOr<PagePool::Handle> run = (*it)->Insert(key, pages, /*evictable=*/false);
    if (run.ok()) return HostRun{run->data(), it->get(), key};  // owned entries stay when the handle goes
    if (run.status().code() != absl::StatusCode::kResourceExhausted) return run.status();
  }
  PagePool::Options o;
  o.page_bytes = layout_.page_bytes();
  o.capacity_bytes = std::max<size_t>(pages, (size_t{64} << 20) / o.page_bytes) * o.page_bytes;
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<PagePool> pool, PagePool::Create(&pinned_alloc_, o));
  const PagePool::Key key = pool->NewKey();
  LIVEKV_ASSIGN_OR_RETURN(PagePool::Handle run, pool->Insert(key, pages, false));
  const HostRun out{run.data(), pool.get(), key};
  run.Release();
  host_pools_.push_back(std::move(pool));
  return out;
}

absl::Status CudaRecallKvContext::Select(int layer, TensorView q, ContextKv* ctx) {
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ", config_.num_layers, ")"));
  }
  if (q.dtype != DType::kBF16 || q.rank() != 3 || q.dim(1) != hq_ || q.dim(2) != d_) {
    return absl::InvalidArgumentError(absl::StrCat("queries must be BF16 [n, ", hq_, ", ", d_, "] on the device, saw ",
                                                   DTypeName(q.dtype), " ", ShapeToString(q.shape)));
  }
  const int64_t n = q.dim(0);
  if (!chunk_started_) {
    chunk_started_ = true;
    decode_chunk_ = n == 1;
    if (decode_chunk_) {
      ++counters_.decode_steps;
      LIVEKV_RETURN_IF_ERROR(ClusterDueLayers());  // a decode step is a settle point
      if (timeline_) {
        LIVEKV_RETURN_IF_ERROR(step_begin_.Record(backend_->stream()));
        for (auto& l : layers_) std::fill(std::begin(l->marked), std::end(l->marked), false);
      }
    }
  }
  Layer& L = *layers_[layer];
  L.Mark(timeline_ && decode_chunk_, Layer::kQueries, backend_->stream());
  ctx->dtype = DType::kBF16;
  ctx->heads.assign(hkv_, {});
  ctx->query_copy = nullptr;
  const size_t row = layout_.row_bytes();
  if (L.rows > 0) {
    for (int32_t h = 0; h < hkv_; ++h) {
      const uint8_t* k = static_cast<const uint8_t*>(L.tail_k.data()) + h * L.cap * row;
      const uint8_t* v = static_cast<const uint8_t*>(L.tail_v.data()) + h * L.cap * row;
      ctx->heads[h].push_back(KvRun{k, v, static_cast<int32_t>(L.rows), L.clustered ? -1 : 0});
    }
  }
  if (L.dense || L.c == 0) return absl::OkStatus();
  auto add_runs = [&](int32_t h, const uint8_t* const* pages, int32_t tokens) {
    for (int32_t p = 0; p * layout_.page_tokens < tokens; ++p) {
      ctx->heads[h].push_back(KvRun{pages[p], pages[p] + layout_.page_tokens * row,
                                    std::min(layout_.page_tokens, tokens - p * layout_.page_tokens), -1});
    }
  };
  if (n > 1) {
    // A prefill chunk after clustering attends to every cluster, read zero-copy from pinned memory.
    for (int32_t h = 0; h < hkv_; ++h) {
      for (const Layer::ClusterRef& c : L.clusters[h]) {
        for (int32_t p = 0; p * layout_.page_tokens < c.tokens; ++p) {
          const uint8_t* page = c.host + static_cast<size_t>(p) * layout_.page_bytes();
          ctx->heads[h].push_back(KvRun{page, page + layout_.page_tokens * row,
                                        std::min(layout_.page_tokens, c.tokens - p * layout_.page_tokens), -1});
        }
      }
    }
    return absl::OkStatus();
  }

  const int64_t budget = options_.policy.budget;
  const bool everything = L.rows + L.clustered_tokens <= budget;
  if (everything) {
    // Every cluster fits the budget (kvcache's SelectAll): no scoring; hits stay, misses are recalled.
    std::vector<int32_t> chosen(static_cast<size_t>(hkv_) * L.c), count(hkv_, L.c);
    for (int32_t h = 0; h < hkv_; ++h) std::iota(chosen.begin() + h * L.c, chosen.begin() + (h + 1) * L.c, 0);
    L.spec_ready = false;
    LIVEKV_RETURN_IF_ERROR(Recall(L, chosen.data(), count.data(), L.c, &L.current, recall_streams_[layer % 2].get(),
                                  L.attn_done.get()));
  } else {
    ++counters_.sparse_selections;
    if (speculative_ && L.spec_ready) {
      // Selected with the previous step's query; its recall was issued by the worker after that step's attention.
      std::swap(L.current, L.next);
      L.spec_ready = false;
    } else {
      ++counters_.sync_selections;
      std::vector<int32_t> out;
      LIVEKV_RETURN_IF_ERROR(SelectNow(layer, q.data, budget - L.rows, &out));
      const SelLayout lay = SelectLayout(hkv_, L.c);
      const int32_t* count = reinterpret_cast<const int32_t*>(reinterpret_cast<const uint8_t*>(out.data()) + lay.count_off);
      const int32_t* chosen = reinterpret_cast<const int32_t*>(reinterpret_cast<const uint8_t*>(out.data()) + lay.chosen_off);
      LIVEKV_RETURN_IF_ERROR(Recall(L, chosen, count, L.c, &L.current, recall_streams_[layer % 2].get(),
                                    L.attn_done.get()));
    }
    if (speculative_) LIVEKV_RETURN_IF_ERROR(ArmSpeculativeSelect(L, budget - (L.rows + 1), ctx));
  }
  // Attention waits for the recall on the device, not on the host.
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(backend_->stream(), L.recall_done.get(), 0));
  L.Mark(timeline_, Layer::kAttend, backend_->stream());
  for (int32_t h = 0; h < hkv_; ++h) {
    for (const Placed& p : L.current.heads[h]) add_runs(h, L.current.pages.data() + p.page_begin, p.tokens);
  }
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::Append(int layer, TensorView k, TensorView v) {
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ", config_.num_layers, ")"));
  }
  const Shape want{k.rank() > 0 ? k.dim(0) : 0, hkv_, d_};
  if (k.shape != want || v.shape != want || k.dtype != DType::kBF16 || v.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV append to layer ", layer, ": k ", ShapeToString(k.shape),
                                                   " and v ", ShapeToString(v.shape), " must be BF16 ",
                                                   ShapeToString(want)));
  }
  Layer& L = *layers_[layer];
  // The layer's attention was enqueued before its Append (the KvContext protocol): recalls into its cache pages
  // must come after it.
  LIVEKV_RETURN_IF_ERROR(L.attn_done.Record(backend_->stream()));
  const int64_t n = k.dim(0);
  L.Mark(timeline_ && n == 1, Layer::kAttended, backend_->stream());
  LIVEKV_RETURN_IF_ERROR(GrowTail(L, L.rows + L.pending + n));
  LIVEKV_RETURN_IF_ERROR(backend_->ScatterHeadMajor(k, L.tail_k.view(), L.rows + L.pending));
  LIVEKV_RETURN_IF_ERROR(backend_->ScatterHeadMajor(v, L.tail_v.view(), L.rows + L.pending));
  L.pending += n;
  if (L.armed) {
    L.armed = false;
    LIVEKV_RETURN_IF_ERROR(EnqueueSpeculativeSelect(L, L.attn_done.get()));
    Post(layer);
  }
  if (!L.dense && !L.km.active && input_end_ >= 0 && committed_ + L.pending == input_end_) {
    const int64_t older = DueTokens(L, L.rows + L.pending);
    if (older > 0) {
      LIVEKV_RETURN_IF_ERROR(L.gathered.Record(backend_->stream()));  // the keys are in the tail
      LIVEKV_RETURN_IF_ERROR(LaunchClustering(layer, older, L.gathered.get()));
    }
  }
  return StoreFinishedClusterings();
}

absl::Status CudaRecallKvContext::StoreFinishedClusterings() {
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer::KMeans& km = layers_[l]->km;
    if (!km.active || km.stored) continue;
    LIVEKV_ASSIGN_OR_RETURN(const bool done, km.done.Query());
    if (done) LIVEKV_RETURN_IF_ERROR(StoreClustering(l));
  }
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::Commit(int64_t n) {
  LIVEKV_RETURN_IF_ERROR(DrainJobs());
  for (const auto& L : layers_) {
    if (L->pending != n) {
      return absl::FailedPreconditionError(
          absl::StrCat("commit of ", n, " tokens but layer ", L->index, " appended ", L->pending));
    }
  }
  for (auto& L : layers_) {
    L->rows += n;
    L->pending = 0;
  }
  committed_ += n;
  chunk_started_ = false;
  std::vector<int> clustered;
  for (int l = 0; l < config_.num_layers; ++l) {
    if (layers_[l]->km.active) clustered.push_back(l);
  }
  return FinishClusterings(clustered);
}

void CudaRecallKvContext::Rollback() {
  (void)DrainJobs();
  for (auto& L : layers_) {
    L->pending = 0;
    L->armed = false;
    L->spec_ready = false;
    if (L->km.active) {
      (void)L->km.done.Synchronize();
      if (L->km.stored) {  // its copy may still be writing the pinned run: wait, then free the run
        (void)cudaStreamSynchronize(cluster_stream_.get());
        L->km.host_run.pool->Erase(L->km.host_run.key);
      }
      L->km.active = false;
      L->km.stored = false;
      L->km.host_run = HostRun{};
    }
  }
  chunk_started_ = false;
}

absl::Status CudaRecallKvContext::FinishAppend() {
  if (chunk_started_) return absl::FailedPreconditionError("FinishAppend in the middle of a chunk");
  return ClusterDueLayers();
}

// ---- Clustering ----------------------------------------------------------------------------------------------------

int64_t CudaRecallKvContext::DueTokens(const Layer& L, int64_t rows) const {
  if (L.dense) return 0;
  const PolicyOptions& o = options_.policy;
  const int64_t positional = rows - std::min<int64_t>(o.sink, rows);
  const int64_t complete = positional / o.page_tokens;
  const int64_t first_recent = std::max<int64_t>(0, complete - o.window / o.page_tokens);
  const int64_t older = first_recent * o.page_tokens;
  return older >= o.cluster_window ? older : 0;
}

absl::Status CudaRecallKvContext::ClusterDueLayers() {
  std::vector<int> due;
  for (int l = 0; l < config_.num_layers; ++l) {
    if (!layers_[l]->km.active && DueTokens(*layers_[l], layers_[l]->rows) > 0) due.push_back(l);
  }
  if (due.empty()) return absl::OkStatus();
  LIVEKV_RETURN_IF_ERROR(DrainJobs());
  for (int l : due) {
    Layer& L = *layers_[l];
    LIVEKV_RETURN_IF_ERROR(L.gathered.Record(backend_->stream()));
    LIVEKV_RETURN_IF_ERROR(LaunchClustering(l, DueTokens(L, L.rows), L.gathered.get()));
  }
  return FinishClusterings(due);
}

absl::Status CudaRecallKvContext::FinishClusterings(const std::vector<int>& layers) {
  if (layers.empty()) return absl::OkStatus();
  for (int l : layers) {
    if (!layers_[l]->km.stored) LIVEKV_RETURN_IF_ERROR(StoreClustering(l));
  }
  const auto t0 = Clock::now();
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(cluster_stream_.get()));  // every stored run has landed
  counters_.clustering_finish_seconds += Seconds(t0);
  for (int l : layers) LIVEKV_RETURN_IF_ERROR(PublishClustering(l));
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::LaunchClustering(int layer, int64_t older, cudaEvent_t after) {
  Layer& L = *layers_[layer];
  const PolicyOptions& o = options_.policy;
  Layer::KMeans& km = L.km;
  const int32_t c = static_cast<int32_t>(std::min<int64_t>(
      older, std::max<int64_t>(o.window_clusters, (older + o.tokens_per_cluster - 1) / o.tokens_per_cluster)));
  const cudaStream_t s = cluster_stream_.get();
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, after, 0));
  const size_t nc = static_cast<size_t>(hkv_) * c, nl = static_cast<size_t>(hkv_) * older;
  LIVEKV_ASSIGN_OR_RETURN(km.centroids, cuda::DeviceBuffer::Create(nc * d_ * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.labels, cuda::DeviceBuffer::Create(nl * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.sizes, cuda::DeviceBuffer::Create(nc * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.init_rows, cuda::DeviceBuffer::Create(nc * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.labels_host, cuda::PinnedHostBuffer::Create(nl * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.sizes_host, cuda::PinnedHostBuffer::Create(nc * 4));
  LIVEKV_ASSIGN_OR_RETURN(km.init_host, cuda::PinnedHostBuffer::Create(nc * 4));
  const size_t ws = cuda::KMeansWorkspaceBytes(hkv_, static_cast<int32_t>(older), c, d_);
  if (kmeans_ws_.bytes() < ws) {
    kmeans_ws_.Reset();  // cudaFree waits for earlier k-means using it
    LIVEKV_ASSIGN_OR_RETURN(kmeans_ws_, cuda::DeviceBuffer::Create(ws));
  }
  // Distinct initial points per head (ClusterKV samples without replacement: seeds.md §1.9).
  std::mt19937_64 rng(o.kmeans_seed ^ (static_cast<uint64_t>(layer) << 32) ^ static_cast<uint64_t>(committed_));
  std::vector<int32_t> pool(older);
  int32_t* init = km.init_host.as<int32_t>();
  for (int32_t h = 0; h < hkv_; ++h) {
    std::iota(pool.begin(), pool.end(), 0);
    for (int32_t i = 0; i < c; ++i) {
      const int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(older - i));
      std::swap(pool[i], pool[j]);
      init[h * c + i] = pool[i];
    }
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(km.init_rows.data(), init, nc * 4, cudaMemcpyHostToDevice, s));
  const int64_t sink = std::min<int64_t>(o.sink, L.rows + L.pending);
  cuda::KMeansPoints pts;
  pts.data = static_cast<const bf16*>(L.tail_k.data()) + sink * d_;
  pts.head_stride = L.cap * d_;
  pts.row_stride = d_;
  pts.heads = hkv_;
  pts.n = static_cast<int32_t>(older);
  pts.dim = d_;
  LIVEKV_RETURN_IF_ERROR(km.start.Record(s));
  LIVEKV_RETURN_IF_ERROR(cuda::KMeansInitFromPoints(pts, km.init_rows.as<int32_t>(), c, km.centroids.as<float>(), s));
  LIVEKV_RETURN_IF_ERROR(cuda::KMeansRun(pts, c, o.kmeans_iterations, km.centroids.as<float>(), km.labels.as<int32_t>(),
                                         km.sizes.as<int32_t>(), kmeans_ws_.data(), kmeans_ws_.bytes(), s,
                                         options_.kmeans_stop_fraction));
  LIVEKV_RETURN_IF_ERROR(km.end.Record(s));
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(km.labels_host.data(), km.labels.data(), nl * 4, cudaMemcpyDeviceToHost, s));
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(km.sizes_host.data(), km.sizes.data(), nc * 4, cudaMemcpyDeviceToHost, s));
  LIVEKV_RETURN_IF_ERROR(km.done.Record(s));
  km.active = true;
  km.older = older;
  km.c = c;
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::StoreClustering(int layer) {
  const auto t0 = Clock::now();
  Layer& L = *layers_[layer];
  Layer::KMeans& km = L.km;
  LIVEKV_RETURN_IF_ERROR(km.done.Synchronize());
  LIVEKV_ASSIGN_OR_RETURN(float ms, cuda::Event::ElapsedMs(km.start, km.end));
  counters_.kmeans_ms += ms;
  const int32_t c = km.c, P = layout_.page_tokens;
  const int64_t older = km.older;
  const int32_t* labels = km.labels_host.as<int32_t>();
  const int32_t* sizes = km.sizes_host.as<int32_t>();
  // Page layout of the new clusters: head by head, cluster by cluster, back to back in one pinned run.
  std::vector<int64_t>& page_off = km.page_off;
  page_off.assign(static_cast<size_t>(hkv_) * c + 1, 0);
  for (int32_t h = 0; h < hkv_; ++h) {
    for (int32_t j = 0; j < c; ++j) {
      const size_t i = static_cast<size_t>(h) * c + j;
      page_off[i + 1] = page_off[i] + (sizes[i] + P - 1) / P;
    }
  }
  const int64_t total_pages = page_off.back();
  LIVEKV_ASSIGN_OR_RETURN(km.host_run, AllocateHostRun(static_cast<uint32_t>(total_pages)));

  // Gather on the device: token t of head h (tail row sink + t) goes to row j of its cluster's run. The host index
  // alternates between two pinned buffers (the other may still be uploading the previous layer's); the device index
  // and the stage are reused in the cluster stream's order.
  const size_t n = static_cast<size_t>(hkv_) * older;
  const size_t index_bytes = 3 * n * sizeof(int32_t);
  const int slot = gather_slot_;
  gather_slot_ ^= 1;
  if (gather_index_host_[slot].bytes() < index_bytes || gather_index_.bytes() < index_bytes) {
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(cluster_stream_.get()));
    gather_index_host_[slot].Reset();
    LIVEKV_ASSIGN_OR_RETURN(gather_index_host_[slot], cuda::PinnedHostBuffer::Create(index_bytes));
    if (gather_index_.bytes() < index_bytes) {
      gather_index_.Reset();
      LIVEKV_ASSIGN_OR_RETURN(gather_index_, cuda::DeviceBuffer::Create(index_bytes));
    }
  } else {
    LIVEKV_RETURN_IF_ERROR(gather_index_uploaded_[slot].Synchronize());
  }
  int32_t* src = gather_index_host_[slot].as<int32_t>();
  int32_t* dst_k = src + n;
  int32_t* dst_v = dst_k + n;
  // The clustered rows follow the sink (LaunchClustering's view; the chunk may not be committed yet).
  const int64_t sink = std::min<int64_t>(options_.policy.sink, L.rows + L.pending);
  std::vector<int32_t> fill(c);
  for (int32_t h = 0; h < hkv_; ++h) {
    std::fill(fill.begin(), fill.end(), 0);
    for (int64_t t = 0; t < older; ++t) {
      const int32_t lab = labels[h * older + t];
      const int32_t j = fill[lab]++;
      const int64_t page = page_off[static_cast<size_t>(h) * c + lab] + j / P;
      const size_t i = static_cast<size_t>(h) * older + t;
      src[i] = static_cast<int32_t>(h * L.cap + sink + t);
      dst_k[i] = static_cast<int32_t>(page * 2 * P + j % P);
      dst_v[i] = dst_k[i] + P;
    }
  }
  const cudaStream_t s = cluster_stream_.get();
  const size_t stage_bytes = static_cast<size_t>(total_pages) * layout_.page_bytes();
  if (gather_stage_.bytes() < stage_bytes) {
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));  // the previous layer's copy out of it
    gather_stage_.Reset();
    LIVEKV_ASSIGN_OR_RETURN(gather_stage_, cuda::DeviceBuffer::Create(stage_bytes));
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(gather_index_.data(), gather_index_host_[slot].data(), index_bytes, cudaMemcpyHostToDevice, s));
  LIVEKV_RETURN_IF_ERROR(gather_index_uploaded_[slot].Record(s));
  const int32_t* dsrc = gather_index_.as<int32_t>();
  const int64_t row = static_cast<int64_t>(layout_.row_bytes());
  LIVEKV_RETURN_IF_ERROR(cuda::CopyRows(L.tail_k.data(), row, dsrc, gather_stage_.data(), row, dsrc + n,
                                        static_cast<int64_t>(n), row, s));
  LIVEKV_RETURN_IF_ERROR(cuda::CopyRows(L.tail_v.data(), row, dsrc, gather_stage_.data(), row, dsrc + 2 * n,
                                        static_cast<int64_t>(n), row, s));
  LIVEKV_RETURN_IF_ERROR(L.gathered.Record(s));
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(km.host_run.data, gather_stage_.data(), stage_bytes, cudaMemcpyDeviceToHost, s));
  km.stored = true;
  counters_.clustering_finish_seconds += Seconds(t0);
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::PublishClustering(int layer) {
  const auto t0 = Clock::now();
  Layer& L = *layers_[layer];
  Layer::KMeans& km = L.km;
  const int32_t c = km.c;
  const int64_t older = km.older;
  const int32_t* sizes = km.sizes_host.as<int32_t>();
  const std::vector<int64_t>& page_off = km.page_off;
  const int64_t sink = std::min<int64_t>(options_.policy.sink, L.rows);
  const cudaStream_t s = cluster_stream_.get();

  // Cluster index: refs, sizes, centroids (old clusters first, per head).
  const int32_t c_old = L.c, c_all = c_old + c;
  std::vector<int32_t> all_sizes(static_cast<size_t>(hkv_) * c_all);
  for (int32_t h = 0; h < hkv_; ++h) {
    for (int32_t j = 0; j < c_old; ++j) all_sizes[h * c_all + j] = L.sizes[h * c_old + j];
    for (int32_t j = 0; j < c; ++j) {
      const size_t i = static_cast<size_t>(h) * c + j;
      all_sizes[h * c_all + c_old + j] = sizes[i];
      L.clusters[h].push_back(
          Layer::ClusterRef{km.host_run.data + page_off[i] * layout_.page_bytes(), sizes[i], next_cache_key_++});
    }
  }
  LIVEKV_ASSIGN_OR_RETURN(cuda::DeviceBuffer cent, cuda::DeviceBuffer::Create(static_cast<size_t>(hkv_) * c_all * d_ * 4));
  const size_t crow = static_cast<size_t>(d_) * 4;
  if (c_old > 0) {
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(cent.data(), c_all * crow, L.centroids.data(), c_old * crow,
                                                  c_old * crow, hkv_, cudaMemcpyDeviceToDevice, s));
  }
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(cent.as<uint8_t>() + c_old * crow, c_all * crow, km.centroids.data(),
                                                c * crow, c * crow, hkv_, cudaMemcpyDeviceToDevice, s));
  LIVEKV_ASSIGN_OR_RETURN(cuda::DeviceBuffer dsizes, cuda::DeviceBuffer::Create(all_sizes.size() * 4));
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dsizes.data(), all_sizes.data(), all_sizes.size() * 4, cudaMemcpyHostToDevice, s));
  // The pageable sizes are freed and the k-means buffers released below: finish these copies (the clustered KV's
  // copy to pinned memory was waited for by FinishClusterings).
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  L.centroids = std::move(cent);
  L.dev_sizes = std::move(dsizes);
  L.sizes = std::move(all_sizes);
  L.c = c_all;
  L.clustered_tokens += older;
  km.active = false;
  km.stored = false;
  km.host_run = HostRun{};
  km.page_off.clear();
  km.centroids.Reset();
  km.labels.Reset();
  km.sizes.Reset();

  // Drop the clustered rows from the tail: rows [sink + older, rows) move down to [sink, ...), on the compute
  // stream (after StoreClustering's gather, which FinishClusterings' synchronisation already ordered).
  const int64_t remaining = L.rows - sink - older;
  const cudaStream_t cs = backend_->stream();
  const size_t rb = layout_.row_bytes();
  if (L.cap > std::max<int64_t>(4 * (sink + remaining), 1024)) {
    // Shrink after a long prefill: the tail keeps only the sink and the recent window.
    const int64_t cap = std::max<int64_t>(2 * (sink + remaining), 256);
    for (Tensor* t : {&L.tail_k, &L.tail_v}) {
      LIVEKV_ASSIGN_OR_RETURN(Tensor nt, backend_->Allocate(DType::kBF16, Shape{hkv_, cap, d_}));
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(nt.data(), cap * rb, t->data(), L.cap * rb, sink * rb, hkv_,
                                                    cudaMemcpyDeviceToDevice, cs));
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(static_cast<uint8_t*>(nt.data()) + sink * rb, cap * rb,
                                                    static_cast<uint8_t*>(t->data()) + (sink + older) * rb, L.cap * rb,
                                                    remaining * rb, hkv_, cudaMemcpyDeviceToDevice, cs));
      *t = std::move(nt);
    }
    L.cap = cap;
  } else if (remaining > 0) {
    const size_t need = static_cast<size_t>(hkv_) * remaining * rb;
    if (compact_scratch_.bytes() < need) {
      compact_scratch_.Reset();
      LIVEKV_ASSIGN_OR_RETURN(compact_scratch_, cuda::DeviceBuffer::Create(need));
    }
    for (Tensor* t : {&L.tail_k, &L.tail_v}) {
      uint8_t* b = static_cast<uint8_t*>(t->data());
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(compact_scratch_.data(), remaining * rb, b + (sink + older) * rb,
                                                    L.cap * rb, remaining * rb, hkv_, cudaMemcpyDeviceToDevice, cs));
      LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(b + sink * rb, L.cap * rb, compact_scratch_.data(), remaining * rb,
                                                    remaining * rb, hkv_, cudaMemcpyDeviceToDevice, cs));
    }
  }
  L.rows = sink + remaining;
  L.clustered = true;
  L.spec_ready = false;
  // Entry indices are head * clusters + cluster: renumbered, so the cache starts over (its pages may still be read
  // by an in-flight attention; the next recall into them waits for that layer's attention, as always).
  L.ResetCache(L.c, hkv_);
  L.current.Reset(hkv_);
  L.next.Reset(hkv_);

  // Selection buffers sized for the largest cluster count.
  if (L.c > max_clusters_) {
    max_clusters_ = L.c;
    const int32_t group = hq_ / hkv_;
    const SelLayout lay = SelectLayout(hkv_, max_clusters_);
    select_ws_bytes_ = Align256(cuda::ScoreWorkspaceBytes(hkv_, group, max_clusters_)) +
                       Align256(static_cast<size_t>(hkv_) * max_clusters_ * 4) +
                       cuda::SelectWorkspaceBytes(hkv_, max_clusters_);
    select_out_bytes_ = lay.bytes;
    LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(select_stream_.get()));
    for (int i = 0; i < 2; ++i) {
      select_ws_[i].Reset();
      LIVEKV_ASSIGN_OR_RETURN(select_ws_[i], cuda::DeviceBuffer::Create(select_ws_bytes_));
    }
    select_out_.Reset();
    LIVEKV_ASSIGN_OR_RETURN(select_out_, cuda::DeviceBuffer::Create(select_out_bytes_));
    for (auto& other : layers_) {
      if (other->dense) continue;
      other->spec_out.Reset();
      LIVEKV_ASSIGN_OR_RETURN(other->spec_out, cuda::PinnedHostBuffer::Create(select_out_bytes_, /*mapped=*/true));
      LIVEKV_ASSIGN_OR_RETURN(void* device, other->spec_out.device_pointer());
      other->spec_out_device = static_cast<uint8_t*>(device);
      other->spec_ready = false;
    }
  }
  ++counters_.clusterings;
  counters_.clustering_finish_seconds += Seconds(t0);
  return absl::OkStatus();
}

// ---- Selection and recall ------------------------------------------------------------------------------------------

absl::Status CudaRecallKvContext::SelectNow(int layer, const void* q, int64_t cluster_budget,
                                            std::vector<int32_t>* out) {
  Layer& L = *layers_[layer];
  const cudaStream_t s = backend_->stream();
  LIVEKV_RETURN_IF_ERROR(EnqueueSelect(L, q, cluster_budget, /*slot=*/1, select_out_.as<uint8_t>(), s));
  const SelLayout lay = SelectLayout(hkv_, L.c);
  out->resize(lay.bytes / 4);
  LIVEKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(out->data(), select_out_.as<uint8_t>(), lay.bytes, cudaMemcpyDeviceToHost, s));
  return backend_->Synchronize();
}

absl::Status CudaRecallKvContext::EnqueueSelect(Layer& L, const void* q, int64_t cluster_budget, int slot,
                                                uint8_t* out, cudaStream_t stream) {
  const int32_t group = hq_ / hkv_;
  const SelLayout lay = SelectLayout(hkv_, L.c);
  int32_t* chosen = reinterpret_cast<int32_t*>(out + lay.chosen_off);
  int32_t* count = reinterpret_cast<int32_t*>(out + lay.count_off);
  int64_t* taken = reinterpret_cast<int64_t*>(out + lay.taken_off);
  if (cuda::FusedSelectSupported(group, d_, L.c) &&
      cuda::FusedSelectWorkspaceBytes(hkv_, group, L.c) <= select_ws_bytes_) {
    cuda::FusedSelectArgs f;
    f.q = static_cast<const bf16*>(q);
    f.heads = hkv_;
    f.group = group;
    f.head_dim = d_;
    f.centroids = L.centroids.as<float>();
    f.sizes = L.dev_sizes.as<int32_t>();
    f.blocks = L.c;
    f.pooling = Pooling(options_.policy.pooling);
    f.budget = std::max<int64_t>(0, cluster_budget);
    f.chosen = chosen;
    f.count = count;
    f.taken = taken;
    return cuda::FusedSelect(f, select_ws_[slot].data(), select_ws_bytes_, stream);
  }
  uint8_t* ws = select_ws_[slot].as<uint8_t>();
  const size_t score_ws = Align256(cuda::ScoreWorkspaceBytes(hkv_, group, L.c));
  float* pooled = reinterpret_cast<float*>(ws + score_ws);
  uint8_t* sel_ws = ws + score_ws + Align256(static_cast<size_t>(hkv_) * L.c * 4);
  cuda::ScoreArgs a;
  a.q = static_cast<const bf16*>(q);
  a.rows = 1;
  a.heads = hkv_;
  a.group = group;
  a.head_dim = d_;
  a.centroids = L.centroids.as<float>();
  a.blocks = L.c;
  a.pooling = Pooling(options_.policy.pooling);
  a.pooled = pooled;
  LIVEKV_RETURN_IF_ERROR(cuda::ScoreBlocks(a, ws, score_ws, stream));
  cuda::SelectArgs sa{pooled, L.dev_sizes.as<int32_t>(), hkv_, L.c, std::max<int64_t>(0, cluster_budget),
                      chosen, count, taken};
  return cuda::SelectBlocks(sa, sel_ws, cuda::SelectWorkspaceBytes(hkv_, L.c), stream);
}

absl::Status CudaRecallKvContext::ArmSpeculativeSelect(Layer& L, int64_t cluster_budget, ContextKv* ctx) {
  // Hazard 1 (seeds.md §2.8): the estimate reads q_t, made on the compute stream, whose buffer the next layer
  // reuses. The attention stores a snapshot (ContextKv::query_copy), and the selection runs after the attention
  // (enqueued at Append): off the attention's SMs, and with no copy or event between the step's kernels.
  ctx->query_copy = L.q_snap.data();
  L.armed = true;  // the selection and the worker's job follow at Append, once the attention is enqueued
  L.select_budget = cluster_budget;
  return absl::OkStatus();
}

absl::Status CudaRecallKvContext::EnqueueSpeculativeSelect(Layer& L, cudaEvent_t after) {
  const cudaStream_t ss = select_stream_.get();
  LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(ss, after, 0));
  L.Mark(timeline_, Layer::kSelectBegin, ss);
  // The selection writes its result straight into the mapped pinned block the worker reads (no copy after it).
  LIVEKV_RETURN_IF_ERROR(
      EnqueueSelect(L, L.q_snap.as<bf16>(), L.select_budget, /*slot=*/0, L.spec_out_device, ss));
  L.Mark(timeline_, Layer::kSelectEnd, ss);
  return L.sel_done.Record(ss);
}

absl::Status CudaRecallKvContext::Recall(Layer& L, const int32_t* chosen, const int32_t* count, int32_t stride,
                                         Placement* placed, cudaStream_t stream, cudaEvent_t wait) {
  Layer::JobStats& st = L.stats;
  const size_t rb = layout_.row_bytes(), pb = layout_.page_bytes();
  const int32_t P = layout_.page_tokens;
  uint8_t* cache = L.cache.as<uint8_t>();
  const uint32_t stamp = ++L.stamp;
  placed->Reset(hkv_);
  L.runs.clear();
  for (int32_t h = 0; h < hkv_; ++h) {
    for (int32_t i = 0; i < count[h]; ++i) {
      const int32_t c = chosen[static_cast<size_t>(h) * stride + i];
      const Layer::ClusterRef& ref = L.clusters[h][c];
      if (ref.tokens == 0) continue;
      ++st.selected;
      const int32_t id = h * L.stride + c;
      Layer::CacheEntry& e = L.entries[id];
      const int32_t npages = (ref.tokens + P - 1) / P;
      placed->heads[h].push_back(Placed{c, ref.tokens, static_cast<int32_t>(placed->pages.size())});
      if (e.cached) {
        ++st.hit;
        L.Unlink(id);
        L.PushBack(id);
        e.stamp = stamp;
        for (int32_t p : e.pages) placed->pages.push_back(cache + static_cast<size_t>(p) * pb);
        continue;
      }
      // A miss: free pages, evicting least recently used clusters not used by this recall. Their pages may be
      // read by the layer's in-flight attention: the copies below are ordered after it (`wait`).
      while (static_cast<int32_t>(L.free_pages.size()) < npages && L.lru_head >= 0 &&
             L.entries[L.lru_head].stamp != stamp) {
        const int32_t victim = L.lru_head;
        Layer::CacheEntry& v = L.entries[victim];
        L.Unlink(victim);
        v.cached = false;
        L.free_pages.insert(L.free_pages.end(), v.pages.rbegin(), v.pages.rend());
        v.pages.clear();
      }
      if (static_cast<int32_t>(L.free_pages.size()) < npages) {
        // The cache is full of this selection: attention reads the pinned pages directly.
        ++st.zero_copy;
        for (int32_t p = 0; p < npages; ++p) placed->pages.push_back(ref.host + static_cast<size_t>(p) * pb);
        continue;
      }
      e.cached = true;
      e.stamp = stamp;
      e.pages.clear();
      L.PushBack(id);
      ++st.recalled;
      for (int32_t p = 0; p < npages; ++p) {
        const int32_t page = L.free_pages.back();
        L.free_pages.pop_back();
        e.pages.push_back(page);
        uint8_t* dst = cache + static_cast<size_t>(page) * pb;
        const uint8_t* src = ref.host + static_cast<size_t>(p) * pb;
        placed->pages.push_back(dst);
        // The last page up to its last token's V row.
        const uint64_t bytes = p + 1 < npages ? pb : static_cast<uint64_t>(P + ref.tokens - p * P) * rb;
        st.bytes += static_cast<int64_t>(bytes);
        if (!L.runs.empty()) {
          cuda::CopyRun& last = L.runs.back();
          if (last.bytes % pb == 0 && static_cast<const uint8_t*>(last.src) + last.bytes == src &&
              static_cast<uint8_t*>(last.dst) + last.bytes == dst) {
            last.bytes += bytes;
            continue;
          }
        }
        L.runs.push_back(cuda::CopyRun{src, dst, bytes});
      }
    }
  }
  if (!L.runs.empty()) {
    // Hazard 2 (seeds.md §2.8): pages the layer's in-flight attention reads are overwritten only after it.
    if (wait != nullptr) LIVEKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, wait, 0));
    L.Mark(timeline_, Layer::kRecallBegin, stream);
    const size_t n = L.runs.size();
    st.copies += static_cast<int64_t>(n);
    switch (copy_) {
      case RecallCopy::kGather:
      case RecallCopy::kBulk: {
        const int b = L.desc_buf;
        L.desc_buf ^= 1;
        LIVEKV_RETURN_IF_ERROR(L.gather_done[b].Synchronize());  // the gather that last read this list is done
        if (L.desc[b].bytes() < n * sizeof(cuda::CopyRun)) {
          L.desc[b].Reset();
          LIVEKV_ASSIGN_OR_RETURN(L.desc[b], cuda::PinnedHostBuffer::Create(std::max<size_t>(2 * n, 1024) *
                                                                           sizeof(cuda::CopyRun), /*mapped=*/true));
        }
        std::memcpy(L.desc[b].data(), L.runs.data(), n * sizeof(cuda::CopyRun));
        if (copy_ == RecallCopy::kBulk) {
          LIVEKV_RETURN_IF_ERROR(
              cuda::GatherRunsBulk(L.desc[b].as<cuda::CopyRun>(), static_cast<int32_t>(n), gather_ctas_, stream));
        } else {
          LIVEKV_RETURN_IF_ERROR(cuda::GatherRuns(L.desc[b].as<cuda::CopyRun>(), static_cast<int32_t>(n),
                                                  gather_ctas_, gather_threads_, stream));
        }
        LIVEKV_RETURN_IF_ERROR(L.gather_done[b].Record(stream));
        break;
      }
      case RecallCopy::kBatch: {
        std::vector<void*> dsts(n);
        std::vector<const void*> srcs(n);
        std::vector<size_t> sizes(n);
        for (size_t i = 0; i < n; ++i) dsts[i] = L.runs[i].dst, srcs[i] = L.runs[i].src, sizes[i] = L.runs[i].bytes;
        cudaMemcpyAttributes attr = {};
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        size_t attr_idx = 0;
        LIVEKV_CUDA_RETURN_IF_ERROR(
            cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), n, &attr, &attr_idx, 1, stream));
        break;
      }
      case RecallCopy::kPerRun:
        for (const cuda::CopyRun& r : L.runs) {
          LIVEKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(r.dst, r.src, r.bytes, cudaMemcpyHostToDevice, stream));
        }
        break;
    }
    L.Mark(timeline_, Layer::kRecallEnd, stream);
  }
  return L.recall_done.Record(stream);
}

// ---- Worker --------------------------------------------------------------------------------------------------------

void CudaRecallKvContext::Post(int layer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Layer& L = *layers_[layer];
    L.posted = true;
    L.job_done = false;
    jobs_.push_back(layer);
  }
  cv_.notify_all();
}

void CudaRecallKvContext::WorkerLoop() {
  for (;;) {
    int layer;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      layer = jobs_.front();
      jobs_.pop_front();
    }
    Layer& L = *layers_[layer];
    absl::Status s = L.sel_done.Synchronize();  // the selection made from q_t, copied to pinned memory
    if (s.ok()) {
      const SelLayout lay = SelectLayout(hkv_, L.c);
      const uint8_t* o = L.spec_out.as<uint8_t>();
      s = Recall(L, reinterpret_cast<const int32_t*>(o + lay.chosen_off),
                 reinterpret_cast<const int32_t*>(o + lay.count_off), L.c, &L.next, recall_streams_[layer % 2].get(),
                 L.attn_done.get());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      L.job_status = s;
      L.job_done = true;
    }
    cv_.notify_all();
  }
}

absl::Status CudaRecallKvContext::WaitJob(int layer) {
  Layer& L = *layers_[layer];
  if (!L.posted) return absl::OkStatus();
  const auto t0 = Clock::now();
  absl::Status s;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return L.job_done; });
    s = L.job_status;
  }
  counters_.wait_seconds += Seconds(t0);
  L.posted = false;
  L.spec_ready = s.ok();
  return s;
}

absl::Status CudaRecallKvContext::DrainJobs() {
  absl::Status first;
  for (int l = 0; l < config_.num_layers; ++l) {
    absl::Status s = WaitJob(l);
    if (first.ok() && !s.ok()) first = s;
  }
  for (auto& L : layers_) {
    counters_.clusters_selected += L->stats.selected;
    counters_.clusters_hit += L->stats.hit;
    counters_.clusters_recalled += L->stats.recalled;
    counters_.clusters_zero_copy += L->stats.zero_copy;
    counters_.bytes_recalled += L->stats.bytes;
    counters_.copies += L->stats.copies;
    L->stats = Layer::JobStats();
  }
  return first;
}

void CudaRecallKvContext::set_timeline(bool on) {
  timeline_ = false;
  if (!on) return;
  if (step_begin_.get() == nullptr) {
    absl::StatusOr<cuda::Event> e = cuda::Event::Create(/*timing=*/true);
    if (!e.ok()) return;
    step_begin_ = std::move(*e);
  }
  for (auto& L : layers_) {
    for (cuda::Event& m : L->marks) {
      if (m.get() != nullptr) continue;
      absl::StatusOr<cuda::Event> e = cuda::Event::Create(/*timing=*/true);
      if (!e.ok()) return;
      m = std::move(*e);
    }
  }
  timeline_ = true;
}

absl::StatusOr<std::vector<CudaRecallKvContext::LayerTimeline>> CudaRecallKvContext::LastStepTimeline() const {
  if (step_begin_.get() == nullptr) return absl::FailedPreconditionError("the timeline was never switched on");
  LIVEKV_RETURN_IF_ERROR(step_begin_.Synchronize());
  std::vector<LayerTimeline> out;
  for (const auto& L : layers_) {
    LayerTimeline t;
    t.layer = L->index;
    t.sparse = !L->dense && L->c > 0;
    double* field[Layer::kMarks] = {&t.queries,    &t.attend,       &t.attended,  &t.select_begin,
                                    &t.select_end, &t.recall_begin, &t.recall_end};
    for (int m = 0; m < Layer::kMarks; ++m) {
      if (!L->marked[m]) continue;
      LIVEKV_RETURN_IF_ERROR(L->marks[m].Synchronize());
      LIVEKV_ASSIGN_OR_RETURN(*field[m], cuda::Event::ElapsedMs(step_begin_, L->marks[m]));
    }
    out.push_back(t);
  }
  return out;
}

void CudaRecallKvContext::set_speculative(bool on) {
  speculative_ = on;
  if (!on) {
    for (auto& L : layers_) L->spec_ready = false;
  }
}

// ---- Introspection -------------------------------------------------------------------------------------------------

std::vector<CudaRecallKvContext::AttendedCluster> CudaRecallKvContext::LastAttended(int layer, int head,
                                                                                    bool planned) const {
  std::vector<AttendedCluster> out;
  const Layer& L = *layers_[layer];
  const int32_t P = layout_.page_tokens;
  if (planned && !L.spec_ready) return out;
  const Placement& pl = planned ? L.next : L.current;
  if (static_cast<int32_t>(pl.heads.size()) <= head) return out;
  for (const Placed& p : pl.heads[head]) {
    const Layer::ClusterRef& ref = L.clusters[head][p.cluster];
    const int32_t pages = (p.tokens + P - 1) / P;
    for (int32_t i = 0; i < pages; ++i) {
      AttendedCluster a;
      a.cluster = p.cluster;
      a.tokens = std::min(P, p.tokens - i * P);
      a.device = pl.pages[p.page_begin + i];
      a.host = ref.host + static_cast<size_t>(i) * layout_.page_bytes();
      a.bytes = static_cast<size_t>(P + a.tokens) * layout_.row_bytes();
      a.page = i;
      out.push_back(a);
    }
  }
  return out;
}

int32_t CudaRecallKvContext::num_clusters(int layer) const { return layers_[layer]->c; }
int64_t CudaRecallKvContext::tail_rows(int layer) const { return layers_[layer]->rows; }
size_t CudaRecallKvContext::host_bytes_in_use() const {
  size_t n = 0;
  for (const auto& p : host_pools_) n += p->stats().used_bytes;
  return n;
}

size_t CudaRecallKvContext::device_bytes() const {
  size_t n = 0;
  for (const auto& L : layers_) {
    n += L->tail_k.nbytes() + L->tail_v.nbytes() + L->centroids.bytes() + L->dev_sizes.bytes() + L->cache.bytes();
  }
  return n;
}

}  // namespace livekv
