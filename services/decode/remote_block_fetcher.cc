#include "services/decode/remote_block_fetcher.h"

#include <chrono>

#include "absl/container/flat_hash_set.h"

#include "common/status_macros.h"

namespace livekv {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

RemoteBlockFetcher::RemoteBlockFetcher(SequenceKv* mirror, std::unique_ptr<KvChannel> channel, const Options& options)
    : mirror_(mirror), channel_(std::move(channel)), options_(options), remote_tokens_(mirror->num_tokens()) {
  const KvGeometry& g = mirror->geometry();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) remote_clusters_.push_back(mirror->head(l, h).num_clusters());
  }
  thread_ = std::thread([this] { RecallLoop(); });
}

RemoteBlockFetcher::~RemoteBlockFetcher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

bool RemoteBlockFetcher::IsRemote(int32_t layer, int32_t head, const BlockRef& b) const {
  switch (b.kind) {
    case BlockRef::Kind::kSink: return true;
    case BlockRef::Kind::kCluster:
      return b.index < remote_clusters_[static_cast<size_t>(layer) * mirror_->geometry().num_kv_heads + head];
    case BlockRef::Kind::kPage: return b.first_position < remote_tokens_;
  }
  return false;
}

void RemoteBlockFetcher::RecallLoop() {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RemoteBlockFetcher* f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(f->mu_) { return f->stop_ || !f->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stop_ with nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    const auto t0 = std::chrono::steady_clock::now();
    int64_t bytes = 0;
    const absl::Status s = channel_->Fetch(job.blocks, &bytes);
    absl::MutexLock lock(&mu_);
    stats_.recall_seconds += SecondsSince(t0);
    for (const Key& k : job.keys) {
      auto it = state_.find(k);
      if (it == state_.end() || it->second != job.id) continue;
      if (s.ok()) {
        it->second = 0;
      } else {
        state_.erase(it);  // not present: a later demand fetches it again
      }
    }
    if (s.ok()) {
      stats_.recalled_bytes += bytes;
      stats_.recalled_blocks += static_cast<int64_t>(job.blocks.size());
    } else if (error_.ok()) {
      error_ = s;
    }
    done_upto_ = job.id;
  }
}

absl::StatusOr<uint64_t> RemoteBlockFetcher::Queue(const SequenceKv& kv, int32_t layer,
                                                   const LayerSelection& selection,
                                                   std::vector<uint64_t>* waiting_on, bool count_demand) {
  Job job;
  absl::MutexLock lock(&mu_);
  for (int32_t h = 0; h < static_cast<int32_t>(selection.heads.size()); ++h) {
    for (const BlockRef& b : kv.SelectedBlocks(layer, h, selection.heads[h])) {
      if (!IsRemote(layer, h, b)) continue;
      const Key key = KeyOf(layer, h, b);
      if (count_demand) ++stats_.demanded_blocks;
      auto it = state_.find(key);
      if (it != state_.end()) {
        if (it->second != 0 && waiting_on != nullptr) waiting_on->push_back(it->second);
        continue;
      }
      if (count_demand) ++stats_.demand_misses;
      // Resolve the destination now, on the decode thread: the sequence's structures are not thread-safe.
      LIVEKV_ASSIGN_OR_RETURN(absl::Span<uint8_t> dest, kv.BlockBytes(layer, h, b));
      job.blocks.push_back({layer, h, b, dest});
      job.keys.push_back(key);
    }
  }
  if (job.blocks.empty()) return uint64_t{0};
  job.id = next_job_++;
  for (const Key& k : job.keys) state_[k] = job.id;
  const uint64_t id = job.id;
  queue_.push_back(std::move(job));
  return id;
}

absl::Status RemoteBlockFetcher::WaitFor(uint64_t job_id) {
  absl::MutexLock lock(&mu_);
  std::pair<RemoteBlockFetcher*, uint64_t> arg(this, job_id);
  mu_.Await(absl::Condition(
      +[](std::pair<RemoteBlockFetcher*, uint64_t>* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return a->first->done_upto_ >= a->second;
      },
      &arg));
  return error_;
}

void RemoteBlockFetcher::ForgetUnselected(const SequenceKv& kv, int32_t layer, const LayerSelection& selection) {
  absl::flat_hash_set<Key> selected;
  for (int32_t h = 0; h < static_cast<int32_t>(selection.heads.size()); ++h) {
    for (const BlockRef& b : kv.SelectedBlocks(layer, h, selection.heads[h])) selected.insert(KeyOf(layer, h, b));
  }
  absl::MutexLock lock(&mu_);
  // Only present blocks (state 0) go: a block a job is still recalling keeps its entry until the job is done.
  // Nothing reads a forgotten block before it is recalled again (attention reads only the current selection).
  for (auto it = state_.begin(); it != state_.end();) {
    const bool forget = std::get<0>(it->first) == layer && it->second == 0 && !selected.contains(it->first) &&
                        std::get<2>(it->first) != static_cast<int>(BlockRef::Kind::kSink);
    if (forget) {
      state_.erase(it++);
    } else {
      ++it;
    }
  }
}

absl::Status RemoteBlockFetcher::EnsureResident(const SequenceKv& kv, int32_t layer, const LayerSelection& sel) {
  if (options_.resident_selection_only) ForgetUnselected(kv, layer, sel);
  std::vector<uint64_t> waiting_on;
  LIVEKV_ASSIGN_OR_RETURN(uint64_t job, Queue(kv, layer, sel, &waiting_on, /*count_demand=*/true));
  for (uint64_t j : waiting_on) job = std::max(job, j);
  if (job == 0) return absl::OkStatus();
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s = WaitFor(job);  // jobs complete in order: waiting for the latest covers the others
  absl::MutexLock lock(&mu_);
  stats_.blocked_seconds += SecondsSince(t0);
  return s;
}

absl::Status RemoteBlockFetcher::Prefetch(const SequenceKv& kv, int32_t layer, const LayerSelection& sel) {
  return Queue(kv, layer, sel, nullptr, /*count_demand=*/false).status();
}

absl::Status RemoteBlockFetcher::Drain() {
  uint64_t last;
  {
    absl::MutexLock lock(&mu_);
    last = next_job_ - 1;
  }
  return last == 0 ? absl::OkStatus() : WaitFor(last);
}

absl::Status RemoteBlockFetcher::FetchEager(bool all_positional) {
  LayerSelection eager;
  const KvGeometry& g = mirror_->geometry();
  uint64_t last = 0;
  for (int32_t l = 0; l < g.num_layers; ++l) {
    eager.heads.assign(g.num_kv_heads, HeadSelection{});
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const HeadKv& head = mirror_->head(l, h);
      HeadSelection& s = eager.heads[h];
      s.sink = head.sink_count() > 0;
      const int32_t first = all_positional ? 0 : std::max(0, head.num_pages() - 1);
      for (int32_t p = first; p < head.num_pages(); ++p) s.pages.push_back({p, 0, head.page(p).count});
    }
    LIVEKV_ASSIGN_OR_RETURN(uint64_t job, Queue(*mirror_, l, eager, nullptr, /*count_demand=*/false));
    last = std::max(last, job);
  }
  return last == 0 ? absl::OkStatus() : WaitFor(last);
}

FetchStats RemoteBlockFetcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace livekv
