// FreeKV's speculative recall, measured. A session's KV lives in a "store" (a SequenceKv in this process); decode
// runs on an index-only mirror whose blocks are recalled through a channel that copies from the store, optionally
// sleeping per fetch to stand in for a slower link. Three ways to decode:
//   local        every block already in the decode process (no recall at all): the ceiling
//   synchronous  each layer recalls what it selects before attending
//   speculative  each layer attends what was selected with the previous step's query and recalled during the
//                previous step (FreeKV), correcting heads whose query drifted
// Part 1 (dummy 8-layer model, hidden 768, 8k context, budget 1024): step time of each ÷ local, at channel delays
// 0, 1 and 3 ms per fetch, pure speculation (tau = -1) and tau = 0.8.
// Part 2 (models/tiny, the trained model): correction rate, mean query cosine and prefetch hit rate per sparse
// layer, for long input (answers about 4 KB documents) and long generation (400 generated tokens).
//
//   bazel run //bench:speculative_bench
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/allocator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_files.h"
#include "engine/presets.h"
#include "engine/transformer.h"
#include "engine/weights.h"
#include "kvcache/policy_kv_context.h"
#include "models/eval_set.h"
#include "services/channels/kv_channel.h"
#include "services/decode/remote_block_fetcher.h"

namespace livekv {
namespace {

using Clock = std::chrono::steady_clock;

// Copies blocks out of a source sequence (the "store"), sleeping `delay` per fetch.
class LocalChannel : public KvChannel {
 public:
  LocalChannel(const SequenceKv* source, absl::Duration delay) : source_(source), delay_(delay) {}
  std::string name() const override { return "local"; }
  absl::Status Fetch(const std::vector<BlockDestination>& blocks, int64_t* bytes_out) override {
    if (delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
    int64_t bytes = 0;
    for (const BlockDestination& b : blocks) {
      absl::StatusOr<absl::Span<uint8_t>> src = source_->BlockBytes(b.layer, b.kv_head, b.block);
      if (!src.ok()) return src.status();
      std::memcpy(b.destination.data(), src->data(), src->size());
      bytes += static_cast<int64_t>(src->size());
    }
    if (bytes_out != nullptr) *bytes_out = bytes;
    return absl::OkStatus();
  }

 private:
  const SequenceKv* source_;
  const absl::Duration delay_;
};

// An index-only copy of `source` in `pool` (what decode's LoadMirror builds).
std::unique_ptr<SequenceKv> IndexMirror(const SequenceKv& source, PagePool* pool) {
  auto m = SequenceKv::Create(source.geometry(), pool).value();
  const KvGeometry& g = source.geometry();
  for (int l = 0; l < g.num_layers; ++l) {
    for (int h = 0; h < g.num_kv_heads; ++h) {
      const HeadKv& s = source.head(l, h);
      (void)m->ImportSink(l, h, s.sink_count(), nullptr);
      for (int c = 0; c < s.num_clusters(); ++c) {
        (void)m->ImportCluster(l, h, s.cluster(c).positions,
                               absl::MakeConstSpan(s.centroids() + c * g.layout.head_dim, g.layout.head_dim), nullptr);
      }
      for (int p = 0; p < s.num_pages(); ++p) {
        const bool complete = p < s.num_complete_pages();
        (void)m->ImportPage(l, h, s.page(p).first_position, s.page(p).count,
                            complete ? s.page_hi() + p * g.layout.head_dim : nullptr,
                            complete ? s.page_lo() + p * g.layout.head_dim : nullptr, nullptr);
      }
    }
  }
  if (!m->FinishImport(source.num_tokens()).ok()) std::abort();
  return m;
}

struct Decoded {
  double ms_per_step = 0;
  std::vector<LayerCounters> counters;
  FetchStats fetch;
  std::string text;
};

enum class Mode { kLocal, kSynchronous, kSpeculative };

// Decodes `steps` greedy tokens after `prompt` from a copy of `store` (already holding the context).
Decoded Decode(const ModelConfig& c, Transformer* model, ThreadPool* threads, const SequenceKv& store,
               PolicyOptions policy, Mode mode, absl::Duration delay, const std::vector<int32_t>& prompt, int steps,
               bool byte_text, bool resident_selection_only = false) {
  HostAllocator host;
  auto pool = CreateKvPagePool(c, policy, store.num_tokens() + prompt.size() + steps + 64, &host).value();
  std::unique_ptr<SequenceKv> mirror = IndexMirror(store, pool.get());
  policy.speculative = mode == Mode::kSpeculative;
  auto kv = PolicyKvContext::Adopt(c, policy, std::move(mirror), threads).value();
  std::unique_ptr<RemoteBlockFetcher> fetcher;
  if (mode == Mode::kLocal) {
    // Everything copied in before decoding: no recall at all.
    LocalChannel all(&store, absl::ZeroDuration());
    RemoteBlockFetcher f(kv->mutable_sequence(), std::make_unique<LocalChannel>(&store, absl::ZeroDuration()));
    for (int l = 0; l < c.num_layers; ++l) {
      LayerSelection sel;
      for (int h = 0; h < c.num_kv_heads; ++h) sel.heads.push_back(kv->sequence().SelectAll(l, h));
      (void)f.EnsureResident(kv->sequence(), l, sel);
    }
  } else {
    RemoteBlockFetcher::Options fo;
    fo.resident_selection_only = resident_selection_only;
    fetcher = std::make_unique<RemoteBlockFetcher>(kv->mutable_sequence(),
                                                   std::make_unique<LocalChannel>(&store, delay), fo);
    (void)fetcher->FetchEager(true);
    kv->set_block_fetcher(fetcher.get());
  }
  std::vector<float> logits;
  if (!model->Forward(prompt, kv.get(), false, &logits).ok()) std::abort();
  Decoded d;
  // Fetch statistics of the decode steps only: the prompt's recalls are not what speculation hides.
  const FetchStats before = fetcher != nullptr ? fetcher->stats() : FetchStats{};
  const auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) {
    const int32_t t = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (byte_text && t < 256) d.text.push_back(static_cast<char>(t));
    if (!model->Forward({&t, 1}, kv.get(), false, &logits).ok()) std::abort();
  }
  d.ms_per_step = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / steps;
  if (fetcher != nullptr) {
    (void)fetcher->Drain();
    d.fetch = fetcher->stats();
    d.fetch.blocked_seconds -= before.blocked_seconds;
    d.fetch.recall_seconds -= before.recall_seconds;
    d.fetch.recalled_blocks -= before.recalled_blocks;
    d.fetch.recalled_bytes -= before.recalled_bytes;
    d.fetch.demanded_blocks -= before.demanded_blocks;
    d.fetch.demand_misses -= before.demand_misses;
    kv->set_block_fetcher(nullptr);
  }
  d.counters = kv->counters();
  return d;
}

void Part1() {
  ModelConfig c = PresetConfig("small-100m").value();
  c.num_layers = 8;
  c.max_position_embeddings = 131072;
  CpuBackend backend;
  auto model = Transformer::Create(c, DummyWeights(c, 1, &backend).value(), &backend).value();
  PolicyOptions policy;
  policy.budget = 1024;
  policy.tokens_per_cluster = 80;
  HostAllocator host;
  const int64_t context = 8192;
  auto pool = CreateKvPagePool(c, policy, context + 64, &host).value();
  auto store = PolicyKvContext::Create(c, policy, pool.get(), backend.pool()).value();
  // The context: random keys and values (the decode step does not care where they came from), then clustered.
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> k(2048 * c.kv_dim()), v(k.size());
  for (int64_t done = 0; done < context; done += 2048) {
    for (float& x : k) x = n(rng);
    for (float& x : v) x = n(rng);
    for (int l = 0; l < c.num_layers; ++l) {
      (void)store->Append(l, TensorView{k.data(), DType::kF32, {2048, c.num_kv_heads, c.head_dim}},
                          TensorView{v.data(), DType::kF32, {2048, c.num_kv_heads, c.head_dim}});
    }
    (void)store->Commit(2048);
  }
  (void)store->FinishAppend();
  const std::vector<int32_t> prompt = {11, 12, 13, 14};
  const int steps = 24;
  const Decoded local = Decode(c, model.get(), backend.pool(), store->sequence(), policy, Mode::kLocal,
                               absl::ZeroDuration(), prompt, steps, false);
  std::printf("part 1: dummy 8-layer model (hidden 768), 8k context, clusterkv budget 1024, %d steps\n", steps);
  std::printf("  local (every block present, no recall): %.2f ms/step\n", local.ms_per_step);
  std::printf("  \"bounded\": only each layer's current selection stays resident (a device cache of one budget per "
              "layer: RemoteBlockFetcher::Options::resident_selection_only), so selections that change are recalled "
              "again; otherwise a recalled block stays for the whole call\n");
  std::printf("  %-18s %-22s %9s %8s %12s %12s %9s\n", "delay", "mode", "ms/step", "÷ local", "blocked/step",
              "blocks/step", "corr.rate");
  for (const auto& [bounded, delay_ms] : std::vector<std::pair<bool, int>>{
           {false, 0}, {false, 1}, {false, 3}, {true, 0}, {true, 1}, {true, 3}}) {
    // The VM is shared: "local" is measured again next to each group, and each group's ratios use it.
    const Decoded group_local = Decode(c, model.get(), backend.pool(), store->sequence(), policy, Mode::kLocal,
                                       absl::ZeroDuration(), prompt, steps, false);
    std::printf("  (local again: %.2f ms/step)\n", group_local.ms_per_step);
    struct M {
      const char* name;
      Mode mode;
      float tau;
    };
    for (const M m : {M{"synchronous", Mode::kSynchronous, 0.8f}, M{"speculative tau=-1", Mode::kSpeculative, -1.0f},
                      M{"speculative tau=0.8", Mode::kSpeculative, 0.8f}}) {
      PolicyOptions p = policy;
      p.correction_threshold = m.tau;
      const Decoded d = Decode(c, model.get(), backend.pool(), store->sequence(), p, m.mode,
                               absl::Milliseconds(delay_ms), prompt, steps, false, bounded);
      int64_t checks = 0, corrections = 0;
      for (const LayerCounters& lc : d.counters) {
        checks += lc.correction_checks;
        corrections += lc.corrections;
      }
      std::printf("  %-18s %-22s %9.2f %8.2f %9.2f ms %12.1f %9s\n",
                  absl::StrCat(delay_ms, " ms/fetch", bounded ? ", bounded" : "").c_str(),
                  m.name, d.ms_per_step, d.ms_per_step / group_local.ms_per_step, d.fetch.blocked_seconds * 1e3 / steps,
                  double(d.fetch.recalled_blocks) / steps,
                  checks > 0 ? absl::StrFormat("%.2f", double(corrections) / checks).c_str() : "-");
    }
  }
}

void Part2() {
  CpuBackend backend;
  LoadedModel m = LoadModel("models/tiny", &backend).value();
  const ModelConfig& c = m.config;
  std::printf(
      "part 2: models/tiny, clusterkv budget 512; per sparse layer: correction rate at tau 0.8 / 0.9, mean "
      "query cosine between steps, prefetch hit rate (remote blocks found present or in flight when needed)\n");
  const std::vector<EvalDoc> docs = ReadEvalDocs("models/tiny/eval/multikey_4096.jsonl", 5).value();
  struct Workload {
    const char* name;
    bool long_generation;
  };
  for (const Workload w : {Workload{"long input (5 x ~4.1k-token documents, answers)", false},
                           Workload{"long generation (400 tokens after a 4.1k-token document)", true}}) {
    for (float tau : {0.8f, 0.9f}) {
      std::vector<LayerCounters> sum(c.num_layers);
      FetchStats fetch;
      int correct = 0;
      for (size_t i = 0; i < (w.long_generation ? 1 : docs.size()); ++i) {
        const std::string document = docs[i].document();
        const std::string question = w.long_generation ? std::string("The river") : docs[i].question();
        PolicyOptions policy;
        policy.budget = 512;
        policy.sparse_prefill = true;
        policy.correction_threshold = tau;
        HostAllocator host;
        auto pool = CreateKvPagePool(c, policy, 4400, &host).value();
        auto store = PolicyKvContext::Create(c, policy, pool.get(), backend.pool()).value();
        store->set_sparse_prefill(false);
        const std::vector<int32_t> ids = m.tokenizer->EncodeWithSpecials(document).value();
        std::vector<float> logits;
        for (size_t b = 0; b < ids.size(); b += 256) {
          (void)m.transformer->Forward(absl::MakeConstSpan(ids).subspan(b, std::min<size_t>(256, ids.size() - b)),
                                       store.get(), false, &logits);
        }
        (void)store->FinishAppend();
        const int steps = w.long_generation ? 400 : static_cast<int>(docs[i].answer.size());
        const Decoded d = Decode(c, m.transformer.get(), backend.pool(), store->sequence(), policy, Mode::kSpeculative,
                                 absl::ZeroDuration(), m.tokenizer->Encode(question).value(), steps, true);
        correct += d.text == docs[i].answer;
        for (int l = 0; l < c.num_layers; ++l) {
          sum[l].correction_checks += d.counters[l].correction_checks;
          sum[l].corrections += d.counters[l].corrections;
          sum[l].cosine_sum += d.counters[l].cosine_sum;
        }
        fetch.demanded_blocks += d.fetch.demanded_blocks;
        fetch.demand_misses += d.fetch.demand_misses;
      }
      std::printf("  %-58s tau %.1f:", w.name, tau);
      for (int l = 2; l < c.num_layers; ++l) {
        std::printf("  layer %d corr %.2f cos %.2f", l, sum[l].correction_rate(), sum[l].mean_cosine());
      }
      std::printf("  | hit %.2f",
                  fetch.demanded_blocks ? 1.0 - double(fetch.demand_misses) / fetch.demanded_blocks : 0.0);
      if (!w.long_generation) std::printf("  | answers %d/%zu", correct, docs.size());
      std::printf("\n");
    }
  }
}

}  // namespace
}  // namespace livekv

int main() {
  livekv::Part1();
  livekv::Part2();
  return 0;
}
