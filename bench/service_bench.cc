// The price of disaggregation, on loopback: the three services in this process, each behind a real gRPC server on
// 127.0.0.1 (TCP), with the embedded model.
//   1. control-call latency: GetSession p50/p99;
//   2. time to first token and inter-token latency through decode (session in the store, blocks recalled over
//      gRPC) versus the same work in one process (the same policy context, no RPC), and their ratio;
//   3. recall throughput over gRPC (KvStore.Recall of a 64 MiB session) next to single-thread memcpy measured in
//      the same run.
//
//   bazel run //bench:service_bench
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "bench/ceilings.h"
#include "common/allocator.h"
#include "common/rpc/client.h"
#include "kvcache/policy_kv_context.h"
#include "models/eval_set.h"
#include "services/common/convert.h"
#include "tests/integration/in_process_cluster.h"

namespace livekv {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

int Run() {
  auto cluster = InProcessCluster::Start().value();
  const LoadedModel& model = cluster->model();

  // 1. Control calls.
  PolicyOptions policy;
  policy.budget = 512;
  policy.sparse_prefill = true;
  const v1::Session session = cluster->CreateSession(policy).value();
  std::vector<double> lat;
  for (int i = 0; i < 5200; ++i) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(5));
    v1::GetSessionRequest req;
    req.set_session_id(session.session_id());
    v1::Session resp;
    const auto t0 = Clock::now();
    if (!cluster->store().GetSession(&ctx, req, &resp).ok()) return 1;
    if (i >= 200) lat.push_back(Ms(t0, Clock::now()) * 1e3);
  }
  std::printf("control calls (KvStore.GetSession over TCP loopback, 5000 calls): p50 %.0f us, p99 %.0f us\n",
              Percentile(lat, 0.5), Percentile(lat, 0.99));

  // 2. Generation through the services versus in one process.
  const std::string document = ReadEvalDoc("models/tiny/eval/passkey_2048.jsonl", 0).value().document();
  const std::string question = "The river";  // continues as prose, so every step produces a token
  const int kTokens = 48, kRuns = 5;
  {
    grpc::ClientContext ctx;
    v1::AppendTextRequest req;
    req.set_session_id(session.session_id());
    req.set_text(document);
    req.set_add_bos(true);
    v1::AppendTextResponse resp;
    if (!cluster->prefill().AppendText(&ctx, req, &resp).ok()) return 1;
  }
  std::vector<double> ttft_services, itl_services;
  for (int run = 0; run < kRuns; ++run) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(60));
    v1::GenerateRequest req;
    req.set_session_id(session.session_id());
    req.set_prompt(question);
    req.set_max_tokens(kTokens);
    const auto t0 = Clock::now();
    auto reader = cluster->decode().Generate(&ctx, req);
    v1::GenerateResponse r;
    auto last = t0;
    int tokens = 0;
    while (reader->Read(&r)) {
      if (r.token_ids_size() == 0) continue;
      const auto now = Clock::now();
      if (tokens == 0) {
        ttft_services.push_back(Ms(t0, now));
      } else {
        itl_services.push_back(Ms(last, now));
      }
      last = now;
      tokens += r.token_ids_size();
    }
    if (!reader->Finish().ok()) return 1;
  }
  // In one process: the same document KV (prefilled densely, clustered at the end of the input), then the same
  // question and steps through the same policy context, with no RPC and no store.
  std::vector<double> ttft_local, itl_local;
  const std::vector<int32_t> doc_ids = model.tokenizer->EncodeWithSpecials(document).value();
  const std::vector<int32_t> q_ids = model.tokenizer->Encode(question).value();
  for (int run = 0; run < kRuns; ++run) {
    HostAllocator host;
    auto pool = CreateKvPagePool(model.config, policy, doc_ids.size() + 256, &host).value();
    auto kv = PolicyKvContext::Create(model.config, policy, pool.get(), cluster->reference_backend().pool()).value();
    kv->set_sparse_prefill(false);
    std::vector<float> logits;
    for (size_t b = 0; b < doc_ids.size(); b += 256) {
      const size_t len = std::min<size_t>(256, doc_ids.size() - b);
      if (!model.transformer->Forward(absl::MakeConstSpan(doc_ids).subspan(b, len), kv.get(), false, &logits).ok())
        return 1;
    }
    if (!kv->FinishAppend().ok()) return 1;
    kv->set_sparse_prefill(true);
    const auto t0 = Clock::now();
    if (!model.transformer->Forward(q_ids, kv.get(), false, &logits).ok()) return 1;
    auto last = Clock::now();
    ttft_local.push_back(Ms(t0, last));
    for (int i = 1; i < kTokens; ++i) {
      const int32_t t = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (!model.transformer->Forward({&t, 1}, kv.get(), false, &logits).ok()) return 1;
      const auto now = Clock::now();
      itl_local.push_back(Ms(last, now));
      last = now;
    }
  }
  const double ttft_s = Percentile(ttft_services, 0.5), ttft_l = Percentile(ttft_local, 0.5);
  const double itl_s = Percentile(itl_services, 0.5), itl_l = Percentile(itl_local, 0.5);
  std::printf("generation (models/tiny, %zu-token session, clusterkv budget 512, %d tokens, median of %d runs):\n",
              doc_ids.size(), kTokens, kRuns);
  std::printf("  time to first token: services %.1f ms, one process %.1f ms, ratio %.2f\n", ttft_s, ttft_l,
              ttft_s / ttft_l);
  std::printf("  inter-token latency: services %.2f ms, one process %.2f ms, ratio %.2f\n", itl_s, itl_l,
              itl_s / itl_l);

  // 3. Recall throughput over gRPC: a 64 MiB session written straight into the store.
  PolicyOptions full;
  full.kind = PolicyKind::kFull;
  const v1::Session big = cluster->CreateSession(full).value();
  const KvGeometry g = GeometryFor(model.config, full);
  const int64_t n = (int64_t{64} << 20) / static_cast<int64_t>(g.BytesPerToken());
  std::vector<std::string> keys(g.num_layers), values(g.num_layers);
  std::mt19937 rng(1);
  for (int l = 0; l < g.num_layers; ++l) {
    keys[l].resize(n * g.num_kv_heads * g.layout.row_bytes());
    values[l].resize(keys[l].size());
    for (char& c : keys[l]) c = static_cast<char>(rng());
    for (char& c : values[l]) c = static_cast<char>(rng());
  }
  if (!cluster->store_client().Append(big.session_id(), 0, n, keys, values, Maintenance{}).ok()) return 1;
  auto lease = cluster->store_client().AcquireLease(big.session_id(), absl::Seconds(60), "bench").value();
  HostAllocator host;
  auto pool = PagePool::Create(&host, {g.layout.page_bytes(), size_t{1} << 30}).value();
  auto mirror = cluster->store_client().LoadMirror(big.session_id(), lease, pool.get(), false).value();
  std::vector<KvStoreClient::BlockRequest> all;
  for (int l = 0; l < g.num_layers; ++l) {
    for (int h = 0; h < g.num_kv_heads; ++h) {
      all.push_back({l, h, mirror.kv->SelectedBlocks(l, h, mirror.kv->SelectAll(l, h))});
    }
  }
  std::vector<double> seconds;
  int64_t bytes = 0;
  for (int run = 0; run < 5; ++run) {
    const auto t0 = Clock::now();
    if (!cluster->store_client().Recall(big.session_id(), lease, mirror.version, all, mirror.kv.get(), &bytes).ok())
      return 1;
    seconds.push_back(Ms(t0, Clock::now()) / 1e3);
  }
  const double recall = bytes / Percentile(seconds, 0.5) / 1e9;
  const double memcpy = bench::MemcpyGBps(size_t{64} << 20);
  std::printf(
      "recall over gRPC (KvStore.Recall of a %.0f MiB session, 4 MiB chunks, TCP loopback): %.2f GB/s; "
      "memcpy 1 thread %.2f GB/s; ratio %.3f\n",
      bytes / double(1 << 20), recall, memcpy, recall / memcpy);
  (void)cluster->store_client().ReleaseLease(lease);
  return 0;
}

}  // namespace
}  // namespace livekv

int main() { return livekv::Run(); }
