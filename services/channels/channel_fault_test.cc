// Faults with real processes: the store (livekv_kvstore, a separate process on 127.0.0.1) dies while workers fetch
// through every channel, then comes back; a worker (channel_probe) dies holding a lease and pins.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "common/rpc/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/channels/channel_factory.h"
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
using channel_testing::SessionBlocks;
using channel_testing::SessionModel;
using channel_testing::SmallGeometry;
using ::testing::HasSubstr;

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    setenv("UCX_NET_DEVICES", "lo", 1);  // inherited by the store and probe processes too
    grpc_init();
  }
};
::testing::Environment* const environment = ::testing::AddGlobalTestEnvironment(new Environment);

std::string Runfile(const std::string& path) { return JoinPath(JoinPath(std::getenv("TEST_SRCDIR"), "livekv"), path); }

pid_t Spawn(const std::vector<std::string>& args, int stdout_fd = -1) {
  std::vector<char*> argv;
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    if (stdout_fd >= 0) dup2(stdout_fd, STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return child;
}

void KillAndReap(pid_t pid) {
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
}

struct StoreProcess {
  pid_t pid = -1;
  int port = 0;
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

// Starts livekv_kvstore on 127.0.0.1:`port` (0: any) and waits for its port file.
StoreProcess StartStore(int port, const std::string& tag) {
  const std::string port_file = JoinPath(std::getenv("TEST_TMPDIR"), absl::StrCat("kv-", tag, ".port"));
  unlink(port_file.c_str());
  StoreProcess p;
  p.pid = Spawn({Runfile("services/kvstore/livekv_kvstore"), absl::StrCat("--listen=127.0.0.1:", port),
                 "--port_file=" + port_file, "--metrics_listen=", "--pool_bytes=67108864", "--shm_prefault=sync",
                 "--reap_interval_ms=50", "--shutdown_grace_ms=0"});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    auto text = ReadFileToString(port_file);
    if (text.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &p.port) && p.port > 0) return p;
    if (waitpid(p.pid, nullptr, WNOHANG) == p.pid) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ADD_FAILURE() << "livekv_kvstore did not report its port";
  return p;
}

// A client of a (re)started store: the first calls may meet gRPC's reconnection back-off.
std::unique_ptr<KvStoreClient> Connect(const std::string& address, std::unique_ptr<v1::KvStore::Stub>* stub) {
  std::shared_ptr<grpc::Channel> channel = MakeChannel(address);
  auto client = std::make_unique<KvStoreClient>(channel, absl::Seconds(10));
  *stub = v1::KvStore::NewStub(channel);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (client->Stats().status().code() == absl::StatusCode::kUnavailable && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  return client;
}

const KvGeometry kGeometry = SmallGeometry(2, 2, 128, 32, DType::kBF16, 32);  // 16 KiB pages

absl::StatusOr<SessionModel> FillSession(KvStoreClient* client, const std::string& id, uint64_t tag) {
  std::mt19937_64 rng(tag);
  LIVEKV_ASSIGN_OR_RETURN(SessionModel s, CreatePatternSession(client, id, kGeometry, tag));
  LIVEKV_RETURN_IF_ERROR(AppendPattern(client, &s, 1200, 16, 6, 0, &rng));
  LIVEKV_RETURN_IF_ERROR(AppendPattern(client, &s, 300, 4, 3, 0, &rng));
  return s;
}

TEST(ChannelFaultTest, StoreDeathIsUnavailableOnEveryChannelAndANewChannelRecovers) {
  if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  StoreProcess store = StartStore(0, "a");
  ASSERT_GT(store.port, 0);
  std::unique_ptr<v1::KvStore::Stub> stub;
  std::unique_ptr<KvStoreClient> client = Connect(store.address(), &stub);
  auto session = FillSession(client.get(), "fault", 5);
  ASSERT_TRUE(session.ok()) << session.status();
  auto lease = client->AcquireLease(session->id, absl::Seconds(60), "test");
  ASSERT_TRUE(lease.ok());
  auto blocks = ReadBlocks(stub.get(), session->id);
  ASSERT_TRUE(blocks.ok());
  auto offer = client->OpenChannel(session->id, *lease, {});
  ASSERT_TRUE(offer.ok());
  ASSERT_TRUE(offer->has_shm() && offer->has_ucx()) << offer->shm_unavailable() << offer->ucx_unavailable();
  const std::string segment = offer->shm().pools(0).name();

  struct Reader {
    std::string name;
    std::unique_ptr<KvChannel> channel;
    SessionBlocks blocks;
    int64_t ok = 0;
    absl::Status last;
    std::string bad;
  };
  std::vector<Reader> readers(4);
  readers[0].name = "shm";
  readers[0].channel = ShmKvChannel::Open(client.get(), session->id, *lease, blocks->version, offer->shm(),
                                          kGeometry.layout, {}).value();
  readers[1].name = "ucx";
  UcxKvChannel::Options uo;
  uo.timeout = absl::Seconds(5);
  readers[1].channel = UcxKvChannel::Open(client.get(), session->id, *lease, blocks->version, offer->ucx(),
                                          kGeometry.layout, uo).value();
  readers[2].name = "grpc";
  readers[2].channel = std::make_unique<GrpcKvChannel>(client.get(), session->id, *lease, blocks->version);
  readers[3].name = "shm, falling back to grpc";
  readers[3].channel = OpenKvChannel(client.get(), session->id, *lease, blocks->version).value();
  EXPECT_EQ(readers[3].channel->name(), "shm");
  for (Reader& r : readers) r.blocks = *blocks;

  std::vector<std::thread> threads;
  for (Reader& r : readers) {
    threads.emplace_back([&r, tag = session->tag] {
      std::vector<BlockDestination> all;
      for (IndexedBlock& b : r.blocks.blocks) all.push_back(b.destination());
      const absl::Time give_up = absl::Now() + absl::Seconds(60);
      while (absl::Now() < give_up) {
        for (IndexedBlock& b : r.blocks.blocks) std::fill(b.buffer.begin(), b.buffer.end(), 0xEE);
        r.last = r.channel->Fetch(all, nullptr);
        if (!r.last.ok()) return;
        ++r.ok;
        for (const IndexedBlock& b : r.blocks.blocks) {
          const std::string bad = CheckBlock(kGeometry.layout, tag, b, b.buffer);
          if (!bad.empty()) {
            r.bad = bad;
            return;
          }
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  KillAndReap(store.pid);  // mid-recall: every reader is in some Fetch
  for (std::thread& t : threads) t.join();
  for (const Reader& r : readers) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(r.bad, "");
    EXPECT_GT(r.ok, 0);
    EXPECT_EQ(r.last.code(), absl::StatusCode::kUnavailable) << r.last;
  }
  EXPECT_THAT(std::string(readers[0].last.message()), HasSubstr("is gone"));
  // A crashed store leaves its segments behind; the next store removes them at start.
  EXPECT_TRUE(FileExists(JoinPath("/dev/shm", segment.substr(1))));
  readers.clear();

  StoreProcess again = StartStore(store.port, "b");
  ASSERT_EQ(again.port, store.port);
  EXPECT_FALSE(FileExists(JoinPath("/dev/shm", segment.substr(1))));
  std::unique_ptr<v1::KvStore::Stub> stub2;
  std::unique_ptr<KvStoreClient> client2 = Connect(again.address(), &stub2);
  session = FillSession(client2.get(), "fault", 6);
  ASSERT_TRUE(session.ok()) << session.status();
  lease = client2->AcquireLease(session->id, absl::Seconds(60), "test");
  ASSERT_TRUE(lease.ok());
  blocks = ReadBlocks(stub2.get(), session->id);
  ASSERT_TRUE(blocks.ok());
  for (const char* kind : {"", "ucx"}) {
    auto ch = OpenKvChannel(client2.get(), session->id, *lease, blocks->version, {kind});
    ASSERT_TRUE(ch.ok()) << ch.status();
    EXPECT_EQ((*ch)->name(), std::string(kind).empty() ? "shm" : kind);
    std::vector<BlockDestination> all;
    for (IndexedBlock& b : blocks->blocks) all.push_back(b.destination());
    ASSERT_TRUE((*ch)->Fetch(all, nullptr).ok());
    for (const IndexedBlock& b : blocks->blocks) EXPECT_EQ(CheckBlock(kGeometry.layout, 6, b, b.buffer), "");
  }
  KillAndReap(again.pid);
}

// Reads the probe's line "fetched N bytes via X" (or "" on timeout or exit).
std::string ReadLine(int fd, absl::Duration timeout) {
  std::string line;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char c;
    if (read(fd, &c, 1) != 1) break;
    if (c == '\n') return line;
    line += c;
  }
  return line;
}

TEST(ChannelFaultTest, ADeadWorkersLeaseExpiresAndItsPinnedPagesReturnToThePool) {
  if (absl::Status u = channel_testing::UcxUsable(); !u.ok()) GTEST_SKIP() << "UCX cannot create a context: " << u;
  StoreProcess store = StartStore(0, "c");
  ASSERT_GT(store.port, 0);
  std::unique_ptr<v1::KvStore::Stub> stub;
  std::unique_ptr<KvStoreClient> client = Connect(store.address(), &stub);
  auto session = FillSession(client.get(), "worker", 9);
  ASSERT_TRUE(session.ok()) << session.status();
  auto stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  const int64_t held = stats->pool_used_bytes();
  ASSERT_GT(held, 0);

  std::vector<pid_t> probes;
  for (const char* kind : {"shm", "ucx"}) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    probes.push_back(Spawn({Runfile("services/channels/channel_probe"), "--store=" + store.address(),
                            "--session=worker", absl::StrCat("--channel=", kind), "--lease_ttl_ms=1000", "--tag=9"},
                           pipefd[1]));
    close(pipefd[1]);
    const std::string line = ReadLine(pipefd[0], absl::Seconds(30));
    close(pipefd[0]);
    EXPECT_THAT(line, HasSubstr(absl::StrCat("via ", kind))) << "probe " << kind;
  }
  stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases(), 2);
  EXPECT_GT(stats->pinned_runs(), 0);
  // Deleted, but the workers' leases hold its pages.
  ASSERT_TRUE(client->DeleteSession("worker").ok());
  stats = client->Stats();
  EXPECT_EQ(stats->sessions(), 0);
  EXPECT_EQ(stats->pool_used_bytes(), held);
  // Both workers die without releasing anything: their leases expire (1 s, no renewals) and the pins go.
  for (pid_t p : probes) KillAndReap(p);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline && client->Stats()->leases() > 0) absl::SleepFor(absl::Milliseconds(50));
  stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases(), 0);
  EXPECT_EQ(stats->expired_leases(), 2);
  EXPECT_EQ(stats->pinned_runs(), 0);
  EXPECT_EQ(stats->pinned_bytes(), 0);
  EXPECT_EQ(stats->pool_used_bytes(), 0);
  KillAndReap(store.pid);
}

}  // namespace
}  // namespace livekv
