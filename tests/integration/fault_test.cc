// Faults with real service processes (the binaries, started by LocalCluster on 127.0.0.1:0): a prefill process
// killed in the middle of its two-phase append, and a decode process killed in the middle of an answer.
#include <signal.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cli/local_cluster.h"
#include "client/sdk/client.h"
#include "common/allocator.h"
#include "common/rpc/client.h"
#include "gtest/gtest.h"
#include "kvcache/page_pool.h"
#include "models/eval_set.h"
#include "services/kvstore/kvstore_client.h"

namespace livekv {
namespace {

// Everything a reader can observe of a session through the store's API: its metadata, index and every block's
// bytes, in one string.
std::string Fingerprint(KvStoreClient& store, const std::string& session_id) {
  auto session = store.GetSession(session_id);
  EXPECT_TRUE(session.ok()) << session.status();
  auto lease = store.AcquireLease(session_id, absl::Seconds(30), "test");
  EXPECT_TRUE(lease.ok());
  HostAllocator host;
  const size_t page_bytes = 2 * 32 * 32 * 4;  // models/tiny, F32 pages of 32 tokens
  auto pool = PagePool::Create(&host, {page_bytes, size_t{1} << 30}).value();
  auto mirror = store.LoadMirror(session_id, *lease, pool.get(), /*with_bytes=*/true);
  EXPECT_TRUE(mirror.ok()) << mirror.status();
  std::string out = absl::StrCat(session->num_tokens(), "/", session->version(), "/", session->bytes(), ";");
  const SequenceKv& kv = *mirror->kv;
  for (int l = 0; l < kv.geometry().num_layers; ++l) {
    for (int h = 0; h < kv.geometry().num_kv_heads; ++h) {
      const HeadSelection all = kv.SelectAll(l, h);
      for (int64_t p : kv.SelectionPositions(l, h, all)) absl::StrAppend(&out, p, ",");
      for (const BlockRef& b : kv.SelectedBlocks(l, h, all)) {
        absl::Span<uint8_t> bytes = kv.BlockBytes(l, h, b).value();
        out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      }
    }
  }
  mirror->kv.reset();
  EXPECT_TRUE(store.ReleaseLease(*lease).ok());
  return out;
}

TEST(FaultTest, PrefillKilledMidAppendLeavesTheSessionByteForByteAsBefore) {
  cli::LocalClusterOptions options;
  options.threads = 1;
  auto cluster = cli::LocalCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto client = sdk::Client::Connect((*cluster)->client_options()).value();
  sdk::SessionOptions so;
  so.policy.budget = 512;
  auto session = client->CreateSession(so);
  ASSERT_TRUE(session.ok()) << session.status();
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/vartrack_2048.jsonl", 0).value();
  ASSERT_TRUE(client->Append(session->session_id(), doc.document(), true).ok());
  KvStoreClient store(MakeChannel((*cluster)->kvstore().address));
  const std::string before = Fingerprint(store, session->session_id());

  // A large append: its rows (~8k tokens x 4 layers) take a while to stream to the store.
  std::string big;
  while (big.size() < 8000) big += doc.document();
  std::thread appender([&] {
    sdk::ClientOptions no_retry = (*cluster)->client_options();
    no_retry.retry.max_attempts = 1;
    auto c = sdk::Client::Connect(no_retry).value();
    auto r = c->Append(session->session_id(), big, false);
    EXPECT_FALSE(r.ok()) << "the append finished before the prefill process was killed";
  });
  // Kill the prefill process while the store has its append open (between BeginAppend and CommitAppend).
  bool killed = false;
  for (absl::Time give_up = absl::Now() + absl::Seconds(120); absl::Now() < give_up;) {
    auto stats = store.Stats();
    if (stats.ok() && stats->open_appends() > 0) {
      ASSERT_TRUE((*cluster)->Kill("prefill", SIGKILL).ok());
      killed = true;
      break;
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  appender.join();
  ASSERT_TRUE(killed) << "never saw the append open";
  // The store notices the broken stream and aborts the append.
  v1::StatsResponse stats;
  for (absl::Time give_up = absl::Now() + absl::Seconds(30); absl::Now() < give_up;) {
    stats = store.Stats().value();
    if (stats.open_appends() == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(stats.open_appends(), 0);
  EXPECT_GE(stats.aborted_appends(), 1);
  EXPECT_EQ(stats.leases(), 0);
  EXPECT_EQ(Fingerprint(store, session->session_id()), before);
  EXPECT_FALSE((*cluster)->Stop().ok());  // the killed prefill did not exit 0; the others did
}

TEST(FaultTest, DecodeKilledMidAnswerFailsOverAndTheSessionIsIntact) {
  cli::LocalClusterOptions options;
  options.num_decode = 2;
  options.threads = 1;
  auto cluster = cli::LocalCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto client = sdk::Client::Connect((*cluster)->client_options()).value();
  sdk::SessionOptions so;
  so.policy.budget = 512;
  auto session = client->CreateSession(so);
  ASSERT_TRUE(session.ok());
  const EvalDoc doc = ReadEvalDoc("models/tiny/eval/multikey_2048.jsonl", 2).value();
  ASSERT_TRUE(client->Append(session->session_id(), doc.document(), true).ok());
  const v1::Session before = client->GetSession(session->session_id()).value();

  sdk::GenerateRequest req;
  req.session_id = session->session_id();
  req.prompt = doc.question();
  req.max_tokens = 12;
  // Uninterrupted, for reference (served by the first decode process).
  auto reference = client->Generate(req, [](const sdk::Piece&) {});
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->text, doc.answer);

  // Again, killing whichever decode process serves the call after its first piece.
  auto c2 = sdk::Client::Connect((*cluster)->client_options()).value();
  int pieces = 0;
  std::string seen;
  auto r = c2->Generate(req, [&](const sdk::Piece& p) {
    seen += p.text;
    if (++pieces == 1) {
      EXPECT_TRUE((*cluster)->Kill("decode", SIGKILL).ok());
    }
  });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->retries, 1);
  EXPECT_EQ(r->text, reference->text);
  EXPECT_EQ(r->ids, reference->ids);
  EXPECT_EQ(seen, reference->text);  // every piece delivered exactly once
  const v1::Session after = client->GetSession(session->session_id()).value();
  EXPECT_EQ(after.num_tokens(), before.num_tokens());
  EXPECT_EQ(after.version(), before.version());
}

}  // namespace
}  // namespace livekv
