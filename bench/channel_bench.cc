// KV channels, store to worker, each next to its ceiling measured in the same run (performance.md §6 M8, M9):
//   shm   GB/s ÷ single-thread memcpy GB/s (goal ≥ 0.8), pool pre-faulted and reused;
//   ucx   GB/s ÷ memcpy, UCP RMA gets over TCP on loopback (UCX_NET_DEVICES=lo; peer-failure handling admits tcp);
//   grpc  GB/s ÷ shm GB/s (KvStore.Recall, 4 MiB chunks over TCP loopback).
// The store runs in this process behind a real gRPC server on 127.0.0.1 (its pools in POSIX shared memory, a UCX
// worker with its progress thread); each channel fetches every cluster of a 256 MiB session (8 layers x 8 KV heads
// x 8192 tokens, head_dim 128, bf16, 32-token pages of 16 KiB) into one pre-faulted 256 MiB destination. Three
// sessions differ only in their cluster runs: 16 KiB (one page), 16-256 KiB (1-16 pages, uniform), 256 KiB. The
// blocks are fetched in random order (no two runs adjacent in both pool and destination, so every run is its own
// copy or get), and once in storage order, where adjacent runs coalesce.
// "first" includes the fetch's ResolveBlocks of every block; later fetches of the same blocks need no RPC.
//
// A second ceiling, "scattered memcpy", copies the same pieces between two buffers of this process with plain memcpy,
// from their storage offsets to their destination offsets: random 16 KiB pieces out of 256 MiB copy slower than one
// sequential memcpy on this machine whatever moves them, and shm ÷ scattered is the channel's own cost.
//
//   bazel run -c opt //bench:channel_bench
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/ceilings.h"
#include "common/status_macros.h"
#include "services/channels/channel_factory.h"
#include "services/channels/channel_test_util.h"
#include "services/channels/shm_kv_channel.h"
#include "services/channels/ucx_kv_channel.h"

namespace livekv {
namespace {

using channel_testing::SmallGeometry;
using channel_testing::TestStore;
using channel_testing::TestStoreOptions;

constexpr int64_t kSink = 32;
constexpr int64_t kChunk = 1024;      // tokens per append: 32 pages per head, clustered whole
constexpr int64_t kPositional = 8192;  // per session: 8192 tokens x 32 KiB = 256 MiB

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

// A session whose positional tokens are all clustered into contiguous runs of `min_pages`..`max_pages` pages.
absl::Status BuildSession(KvStoreClient* store, const std::string& id, const KvGeometry& g, int min_pages,
                          int max_pages, std::mt19937_64* rng) {
  LIVEKV_ASSIGN_OR_RETURN(channel_testing::SessionModel s, channel_testing::CreatePatternSession(store, id, g, 1));
  const PageLayout& L = g.layout;
  const size_t token_bytes = g.num_kv_heads * L.row_bytes();
  auto rows = [&](int64_t from, int64_t n, std::vector<std::string>* keys, std::vector<std::string>* values) {
    keys->assign(g.num_layers, std::string(n * token_bytes, '\0'));
    values->assign(g.num_layers, std::string(n * token_bytes, '\0'));
    for (int32_t l = 0; l < g.num_layers; ++l) {
      for (int64_t t = 0; t < n; ++t) {
        std::memset(&(*keys)[l][t * token_bytes], static_cast<int>((from + t + l) % 251), token_bytes);
        std::memset(&(*values)[l][t * token_bytes], static_cast<int>((from + t + 7 * l) % 241), token_bytes);
      }
    }
  };
  std::vector<std::string> keys, values;
  rows(0, kSink, &keys, &values);
  LIVEKV_RETURN_IF_ERROR(store->Append(id, 0, kSink, keys, values, {}).status());
  std::uniform_int_distribution<int> pages(min_pages, max_pages);
  for (int64_t from = kSink; from < kSink + kPositional; from += kChunk) {
    rows(from, kChunk, &keys, &values);
    Maintenance m;
    const int32_t chunk_pages = static_cast<int32_t>(kChunk / L.page_tokens);
    for (int32_t l = 0; l < g.num_layers; ++l) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        HeadClustering c{l, h, chunk_pages, {}};
        for (int32_t p = 0; p < chunk_pages;) {
          const int32_t n = std::min(pages(*rng), chunk_pages - p);
          ClusterSpec spec;
          for (int64_t t = 0; t < int64_t{n} * L.page_tokens; ++t) {
            spec.positions.push_back(static_cast<int32_t>(from + int64_t{p} * L.page_tokens + t));
          }
          spec.centroid.assign(L.head_dim, 0.0f);
          c.clusters.push_back(std::move(spec));
          p += n;
        }
        m.clusterings.push_back(std::move(c));
      }
    }
    LIVEKV_RETURN_IF_ERROR(store->Append(id, from, kChunk, keys, values, m).status());
  }
  return absl::OkStatus();
}

struct Row {
  std::string runs;
  size_t blocks = 0;
  double memcpy = 0;     // GB/s of one sequential memcpy of the whole destination, measured just before the row
  double scattered = 0;  // GB/s of plain memcpy of the same pieces, from and to the same offsets
  double shm_first = 0, shm = 0, ucx_first = 0, ucx = 0, grpc = 0;  // GB/s
  bool same = false;  // shm, ucx and grpc returned identical bytes
};

int Run() {
  setenv("UCX_NET_DEVICES", "lo", 1);  // loopback only
  const KvGeometry g = SmallGeometry(8, 8, 128, 32, DType::kBF16, kSink);
  TestStoreOptions options;
  options.pool_bytes = size_t{800} << 20;
  options.prefault = ShmArena::Prefault::kSync;
  auto started = TestStore::Start(options);
  if (!started.ok()) {
    std::fprintf(stderr, "store: %s\n", started.status().ToString().c_str());
    return 1;
  }
  TestStore& t = **started;
  std::mt19937_64 rng(1);
  const size_t total = size_t{kPositional} * g.BytesPerToken();
  std::vector<uint8_t> dst(total, 0), check(total, 0);  // constructed: pre-faulted
  const double memcpy_gbps = bench::MemcpyGBps(total);

  std::vector<Row> rows;
  for (const auto& [name, lo, hi, shuffle] : std::vector<std::tuple<std::string, int, int, bool>>{
           {"16 KiB", 1, 1, true},
           {"16-256 KiB", 1, 16, true},
           {"256 KiB", 16, 16, true},
           {"16 KiB, storage order", 1, 1, false}}) {
    const std::string id = absl::StrCat("bench-", lo, "-", hi, shuffle ? "" : "-ordered");
    if (absl::Status s = BuildSession(&t.client(), id, g, lo, hi, &rng); !s.ok()) {
      std::fprintf(stderr, "session %s: %s\n", id.c_str(), s.ToString().c_str());
      return 1;
    }
    auto lease = t.client().AcquireLease(id, absl::Minutes(10), "bench");
    auto blocks = channel_testing::ReadBlocks(&t.stub(), id);
    if (!lease.ok() || !blocks.ok()) return 1;
    // Every cluster, laid out back to back in one destination in the order fetched: shuffled (as a selection
    // by score asks for them), so that no two runs are adjacent in both the pool and the destination; or in
    // storage order, where consecutive runs coalesce into one copy (PlanRunCopy).
    std::vector<const channel_testing::IndexedBlock*> order;
    std::map<const channel_testing::IndexedBlock*, size_t> stored_at;  // offset in index order (~ pool order)
    size_t stored = 0;
    for (const channel_testing::IndexedBlock& b : blocks->blocks) {
      if (b.block.kind != BlockRef::Kind::kCluster) continue;
      order.push_back(&b);
      stored_at[&b] = stored;
      stored += b.buffer.size();
    }
    if (shuffle) std::shuffle(order.begin(), order.end(), rng);
    std::vector<BlockDestination> all;
    size_t offset = 0;
    for (const channel_testing::IndexedBlock* b : order) {
      all.push_back({b->layer, b->kv_head, b->block, absl::MakeSpan(dst.data() + offset, b->buffer.size())});
      offset += b->buffer.size();
    }
    if (offset != total) {
      std::fprintf(stderr, "clusters hold %zu bytes, expected %zu\n", offset, total);
      return 1;
    }
    Row row;
    row.runs = name;
    row.blocks = all.size();
    auto gbps = [&](double seconds) { return total / seconds / 1e9; };
    // Second ceiling: the same pieces copied with memcpy between two pre-faulted buffers of this process, from
    // their storage offsets to their destination offsets (what the shm channel's copies do, minus its work).
    {
      std::vector<std::pair<size_t, size_t>> pieces;  // source offset, bytes (destinations are back to back)
      for (const channel_testing::IndexedBlock* b : order) pieces.emplace_back(stored_at[b], b->buffer.size());
      row.memcpy = gbps(bench::MedianSeconds([&] { std::memcpy(dst.data(), check.data(), total); }, 5, 1));
      row.scattered = gbps(bench::MedianSeconds(
          [&] {
            uint8_t* d = dst.data();
            for (const auto& [src, bytes] : pieces) {
              std::memcpy(d, check.data() + src, bytes);
              d += bytes;
            }
          },
          5, 1));
    }
    auto timed_once = [](const std::function<void()>& fn) { return bench::MedianSeconds(fn, 1, 0); };
    bool ok = true;
    auto fetch = [&](KvChannel* ch) {
      const absl::Status s = ch->Fetch(all, nullptr);
      if (!s.ok()) {
        std::fprintf(stderr, "%s: %s\n", ch->name().c_str(), s.ToString().c_str());
        ok = false;
      }
    };
    for (const char* kind : {"shm", "ucx"}) {
      auto ch = OpenKvChannel(&t.client(), id, *lease, blocks->version, {kind});
      if (!ch.ok()) {
        std::fprintf(stderr, "%s: %s\n", kind, ch.status().ToString().c_str());
        return 1;
      }
      const double first = gbps(timed_once([&] { fetch(ch->get()); }));
      const double steady = gbps(bench::MedianSeconds([&] { fetch(ch->get()); }, 5, 1));
      if (std::string(kind) == "shm") {
        row.shm_first = first;
        row.shm = steady;
        std::memcpy(check.data(), dst.data(), total);
      } else {
        row.ucx_first = first;
        row.ucx = steady;
        row.same = std::memcmp(check.data(), dst.data(), total) == 0;
      }
    }
    GrpcKvChannel grpc(&t.client(), id, *lease, blocks->version);
    std::memset(dst.data(), 0, total);
    row.grpc = gbps(bench::MedianSeconds([&] { fetch(&grpc); }, 3, 1));
    row.same = row.same && std::memcmp(check.data(), dst.data(), total) == 0;
    if (!ok) return 1;
    rows.push_back(row);
    (void)t.client().ReleaseLease(*lease);
    (void)t.client().DeleteSession(id);
  }

  std::printf("channel_bench: %ld vCPUs (%s); store and worker in one process, gRPC and UCX over 127.0.0.1\n",
              sysconf(_SC_NPROCESSORS_ONLN), CpuModel().c_str());
  std::printf("ceiling: memcpy, 1 thread, %zu MiB, pre-faulted: %.2f GB/s at start; per row below, measured just "
              "before it (the VM is shared)\n\n", total >> 20, memcpy_gbps);
  std::printf("| cluster runs | blocks | memcpy | scattered memcpy | shm first | shm | shm / memcpy | shm / scattered | "
              "ucx first | ucx | ucx / memcpy | grpc | grpc / shm | same bytes |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %zu | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.2f | %.3f | %s |\n",
                r.runs.c_str(), r.blocks, r.memcpy, r.scattered, r.shm_first, r.shm, r.shm / r.memcpy,
                r.shm / r.scattered, r.ucx_first, r.ucx, r.ucx / r.memcpy, r.grpc, r.grpc / r.shm,
                r.same ? "yes" : "NO");
  }
  std::printf("\n(GB/s = 1e9 bytes/s over the %zu MiB fetched; \"first\" includes one ResolveBlocks of every block)\n",
              total >> 20);
  return 0;
}

}  // namespace
}  // namespace livekv

int main() { return livekv::Run(); }
