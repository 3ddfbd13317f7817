// channel_probe: a stand-in compute worker for fault tests. Acquires a lease on a session, opens a KV channel to
// the store, fetches every block of the session (checking the pattern rows of channel_test_util.h when --tag is
// given), prints one line "fetched <bytes> bytes via <channel>" and then renews its lease every third of its TTL
// until it is killed, as a live worker does; once it dies, its lease expires.
//
//   channel_probe --store 127.0.0.1:7101 --session s1 --channel shm --lease_ttl_ms 1000 --tag 3
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/rpc/client.h"
#include "services/channels/channel_factory.h"
#include "services/channels/channel_test_util.h"

ABSL_FLAG(std::string, store, "", "the KV store's address");
ABSL_FLAG(std::string, session, "", "session to read");
ABSL_FLAG(std::string, channel, "", "\"\", shm, ucx or grpc");
ABSL_FLAG(int64_t, lease_ttl_ms, 1000, "lease lifetime");
ABSL_FLAG(int64_t, tag, -1, "pattern tag of the session, to check the bytes (-1: do not check)");

int main(int argc, char** argv) {
  livekv::InitLogging(argv[0]);
  absl::ParseCommandLine(argc, argv);
  using namespace livekv;
  std::shared_ptr<grpc::Channel> grpc_channel = MakeChannel(absl::GetFlag(FLAGS_store));
  KvStoreClient store(grpc_channel, absl::Seconds(10));
  auto stub = v1::KvStore::NewStub(grpc_channel);
  const std::string session = absl::GetFlag(FLAGS_session);
  auto lease = store.AcquireLease(session, absl::Milliseconds(absl::GetFlag(FLAGS_lease_ttl_ms)), "channel_probe");
  if (!lease.ok()) {
    std::fprintf(stderr, "lease: %s\n", lease.status().ToString().c_str());
    return 1;
  }
  auto blocks = channel_testing::ReadBlocks(stub.get(), session);
  if (!blocks.ok()) {
    std::fprintf(stderr, "index: %s\n", blocks.status().ToString().c_str());
    return 1;
  }
  ChannelPreference preference;
  preference.force = absl::GetFlag(FLAGS_channel);
  auto channel = OpenKvChannel(&store, session, *lease, blocks->version, preference);
  if (!channel.ok()) {
    std::fprintf(stderr, "channel: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  std::vector<BlockDestination> all;
  for (channel_testing::IndexedBlock& b : blocks->blocks) all.push_back(b.destination());
  int64_t bytes = 0;
  const absl::Status s = (*channel)->Fetch(all, &bytes);
  if (!s.ok()) {
    std::fprintf(stderr, "fetch: %s\n", s.ToString().c_str());
    return 1;
  }
  if (absl::GetFlag(FLAGS_tag) >= 0) {
    for (const channel_testing::IndexedBlock& b : blocks->blocks) {
      const std::string bad = channel_testing::CheckBlock(blocks->geometry.layout, absl::GetFlag(FLAGS_tag), b, b.buffer);
      if (!bad.empty()) {
        std::fprintf(stderr, "wrong bytes: %s\n", bad.c_str());
        return 1;
      }
    }
  }
  std::printf("fetched %lld bytes via %s\n", static_cast<long long>(bytes), (*channel)->name().c_str());
  std::fflush(stdout);
  const absl::Duration ttl = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ttl_ms));
  for (;;) {
    absl::SleepFor(ttl / 3);
    const absl::Status renewed = store.RenewLease(*lease, ttl);
    if (!renewed.ok()) std::fprintf(stderr, "renew: %s\n", renewed.ToString().c_str());
  }
}
