// Stress: a writer appends, clusters, drops and deletes sessions and lets leases expire (a FakeClock it advances,
// then ReapOnce), in a small pool whose pages are reused all the time, while reader threads fetch through the
// shared-memory and UCX channels and keep fetching after their leases end. Every fetch must either return exactly
// the session's content (checked row by row against the pattern of (session, layer, head, position)) or fail with
// ABORTED or NOT_FOUND; never stale or torn bytes. Sessions left idle for a second of the fake clock move to the
// store's cold tier meanwhile (their memory released) and come back when a reader leases them again.
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "services/channels/channel_test_util.h"
#include "services/channels/shm_kv_channel.h"
#include "services/channels/ucx_kv_channel.h"

namespace livekv {
namespace {

using channel_testing::AppendPattern;
using channel_testing::CheckBlock;
using channel_testing::CreatePatternSession;
using channel_testing::IndexedBlock;
using channel_testing::ReadBlocks;
using channel_testing::SessionModel;
using channel_testing::SmallGeometry;
using channel_testing::TestStore;
using channel_testing::TestStoreOptions;

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    setenv("UCX_NET_DEVICES", "lo", 1);
    grpc_init();
  }
};
::testing::Environment* const environment = ::testing::AddGlobalTestEnvironment(new Environment);

struct Outcomes {
  std::atomic<int64_t> ok{0}, aborted{0}, not_found{0}, after_expiry_ok{0}, after_expiry_aborted{0};
};

TEST(ChannelStressTest, FetchesAreExactOrAbortedUnderChurnAndLeaseExpiry) {
  if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  FakeClock clock;
  TestStoreOptions options;
  options.clock = &clock;
  options.pool_bytes = size_t{3} << 20;  // 3072 pages of 1 KiB: reused constantly
  options.lease_ttl = absl::Seconds(2);
  std::unique_ptr<ColdTier> cold = ColdTier::Create(std::getenv("TEST_TMPDIR")).value();
  options.cold_tier = cold.get();
  options.cold_after = absl::Seconds(1);
  auto started = TestStore::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestStore& t = **started;
  const KvGeometry g = SmallGeometry(2, 2, 16, 8, DType::kF32, 8);

  absl::Mutex mu;
  std::map<std::string, uint64_t> live;  // session id -> pattern tag
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::string first_failure;
  auto fail = [&](const std::string& what) {
    absl::MutexLock lock(&mu);
    if (failures.fetch_add(1) == 0) first_failure = what;
  };

  std::thread writer([&] {
    std::mt19937_64 rng(11);
    std::map<std::string, SessionModel> models;
    uint64_t next_tag = 1;
    while (!stop.load()) {
      if (models.size() < 5 || rng() % 8 == 0) {
        const uint64_t tag = next_tag++;
        auto s = CreatePatternSession(&t.client(), absl::StrCat("s", tag), g, tag);
        if (s.ok()) {
          models[s->id] = *s;
          absl::MutexLock lock(&mu);
          live[s->id] = tag;
        } else if (s.status().code() != absl::StatusCode::kResourceExhausted) {
          fail(absl::StrCat("create: ", s.status().ToString()));
        }
      }
      if (!models.empty()) {
        auto it = models.begin();
        std::advance(it, rng() % models.size());
        absl::Status s = AppendPattern(&t.client(), &it->second, 8 + rng() % 60, rng() % 4, 1 + rng() % 4,
                                       rng() % 3 == 0 ? 1 : 0, &rng);
        const bool full = s.code() == absl::StatusCode::kResourceExhausted;
        if (!s.ok() && !full) fail(absl::StrCat("append: ", s.ToString()));
        if (full || models.size() > 8 || rng() % 6 == 0) {
          const std::string id = models.begin()->first;  // the oldest
          models.erase(models.begin());
          {
            absl::MutexLock lock(&mu);
            live.erase(id);
          }
          const absl::Status d = t.client().DeleteSession(id);
          if (!d.ok()) fail(absl::StrCat("delete: ", d.ToString()));
        }
      }
      // Leases live 2 s of the fake clock: some 10 writer steps, 20-50 ms of real time.
      clock.Advance(absl::Milliseconds(100 + rng() % 300));
      t.store().ReapOnce();
      absl::SleepFor(absl::Milliseconds(2 + rng() % 3));
    }
  });

  Outcomes shm, ucx;
  auto reader = [&](bool use_ucx, uint64_t seed, Outcomes* out) {
    std::mt19937_64 rng(seed);
    while (!stop.load()) {
      std::string id;
      uint64_t tag = 0;
      {
        absl::MutexLock lock(&mu);
        if (live.empty()) continue;
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        id = it->first;
        tag = it->second;
      }
      auto lease = t.client().AcquireLease(id, absl::ZeroDuration(), "reader");
      if (!lease.ok()) continue;  // deleted or expired meanwhile
      const absl::Time expires = clock.Now() + absl::Seconds(2);
      auto blocks = ReadBlocks(&t.stub(), id);
      if (!blocks.ok()) continue;
      if (blocks->blocks.empty()) continue;
      auto offer = t.client().OpenChannel(id, *lease, {use_ucx ? v1::CHANNEL_KIND_UCX : v1::CHANNEL_KIND_SHM});
      if (!offer.ok()) continue;
      std::unique_ptr<KvChannel> ch;
      if (use_ucx) {
        auto c = UcxKvChannel::Open(&t.client(), id, *lease, blocks->version, offer->ucx(), g.layout, {});
        if (!c.ok()) {
          fail(absl::StrCat("ucx open: ", c.status().ToString()));
          continue;
        }
        ch = std::move(*c);
      } else {
        auto c = ShmKvChannel::Open(&t.client(), id, *lease, blocks->version, offer->shm(), g.layout, {});
        if (!c.ok()) {
          fail(absl::StrCat("shm open: ", c.status().ToString()));
          continue;
        }
        ch = std::move(*c);
      }
      // Several fetches under the lease; half of the readers go on fetching after their lease's end (they wait for
      // the fake clock to pass it, as a worker that stalled would).
      const int fetches = 2 + static_cast<int>(rng() % 6);
      const bool outlive = rng() % 2 == 0;
      std::vector<IndexedBlock*> subset;
      for (int f = 0; f < fetches && !stop.load(); ++f) {
        if (outlive && f == 1) {
          const absl::Time give_up = absl::Now() + absl::Seconds(2);
          while (clock.Now() < expires && absl::Now() < give_up && !stop.load()) {
            absl::SleepFor(absl::Milliseconds(1));
          }
          absl::SleepFor(absl::Milliseconds(1 + rng() % 3));
        }
        // Past the lease's end, the blocks of the first fetch: their locations are cached, so only the
        // generations stand between the reader and reused pages (new blocks would be NOT_FOUND at ResolveBlocks).
        if (!(outlive && f >= 1)) {
          subset.clear();
          for (IndexedBlock& b : blocks->blocks) {
            if (rng() % 3 == 0) subset.push_back(&b);
          }
          if (subset.empty()) subset.push_back(&blocks->blocks[rng() % blocks->blocks.size()]);
        }
        std::vector<BlockDestination> dst;
        for (IndexedBlock* b : subset) {
          std::fill(b->buffer.begin(), b->buffer.end(), 0xEE);
          dst.push_back(b->destination());
        }
        const bool expired = clock.Now() >= expires;
        const absl::Status s = ch->Fetch(dst, nullptr);
        if (s.ok()) {
          ++out->ok;
          if (expired) ++out->after_expiry_ok;
          for (IndexedBlock* b : subset) {
            const std::string bad = CheckBlock(g.layout, tag, *b, b->buffer);
            if (!bad.empty()) fail(absl::StrCat(use_ucx ? "ucx" : "shm", " session ", id, ": ", bad));
          }
        } else if (s.code() == absl::StatusCode::kAborted) {
          ++out->aborted;
          if (expired) ++out->after_expiry_aborted;
          break;
        } else if (s.code() == absl::StatusCode::kNotFound) {
          ++out->not_found;
          break;
        } else {
          fail(absl::StrCat(use_ucx ? "ucx" : "shm", " fetch: ", s.ToString()));
          break;
        }
        absl::SleepFor(absl::Microseconds(200 + rng() % 2000));
      }
      if (rng() % 2 == 0) (void)t.client().ReleaseLease(*lease);
    }
  };
  std::vector<std::thread> readers;
  readers.emplace_back(reader, false, 1, &shm);
  readers.emplace_back(reader, false, 2, &shm);
  readers.emplace_back(reader, true, 3, &ucx);

  // Run until both channels have seen enough of every outcome that matters, within bounds.
  const absl::Time deadline = absl::Now() + absl::Seconds(40);
  const absl::Time at_least = absl::Now() + absl::Seconds(6);
  while (absl::Now() < deadline && failures.load() == 0 &&
         (absl::Now() < at_least || shm.ok < 200 || ucx.ok < 50 || shm.after_expiry_aborted < 5 ||
          ucx.after_expiry_aborted < 2 || t.store().Stats().demoted_runs < 20)) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  stop.store(true);
  writer.join();
  for (std::thread& r : readers) r.join();

  EXPECT_EQ(failures.load(), 0) << first_failure;
  for (const auto& [name, o] : {std::pair<const char*, Outcomes*>{"shm", &shm}, {"ucx", &ucx}}) {
    SCOPED_TRACE(name);
    EXPECT_GT(o->ok.load(), 0);
    EXPECT_GT(o->after_expiry_aborted.load(), 0);  // an ended lease's cached runs were detected by generation
    std::printf("%s: %lld exact, %lld aborted (%lld after the lease's expiry, which returned %lld exact), "
                "%lld not found\n",
                name, static_cast<long long>(o->ok.load()), static_cast<long long>(o->aborted.load()),
                static_cast<long long>(o->after_expiry_aborted.load()),
                static_cast<long long>(o->after_expiry_ok.load()), static_cast<long long>(o->not_found.load()));
  }
  // Everything the readers pinned is released with the leases.
  clock.Advance(absl::Seconds(10));
  t.store().ReapOnce();
  const StoreStats st = t.store().Stats();
  EXPECT_EQ(st.leases, 0);
  EXPECT_EQ(st.pinned_runs, 0);
  EXPECT_GT(st.demoted_runs, 0);  // the cold tier took part, and the fetches above stayed exact
  std::printf("cold tier: %lld runs demoted, %lld promoted on demand, %lld prefetched (%lld hits)\n",
              static_cast<long long>(st.demoted_runs), static_cast<long long>(st.prefetch_misses),
              static_cast<long long>(st.prefetched_runs), static_cast<long long>(st.prefetch_hits));
}

}  // namespace
}  // namespace livekv
