#include "common/shm/shm_arena.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/shm/generation_table.h"
#include "common/shm/shm_segment.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Pages of [p, p + bytes) resident in this process's page tables.
size_t ResidentPages(const void* p, size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((bytes + page - 1) / page);
  EXPECT_EQ(::mincore(const_cast<void*>(p), bytes, v.data()), 0);
  size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n;
}

std::unique_ptr<ShmArena> NewArena(ShmArena::Prefault prefault) {
  ShmArena::Options o;
  o.prefix = "livekvtest";
  o.prefault = prefault;
  return ShmArena::Create(o).value();
}

TEST(ShmArenaTest, RegionsAreNamedZeroedPrivateSegmentsThatAnotherMappingSees) {
  auto arena = NewArena(ShmArena::Prefault::kSync);
  EXPECT_EQ(arena->kind(), MemoryKind::kSharedMemory);
  EXPECT_THAT(arena->name_stem(), StartsWith(absl::StrCat("/livekvtest-", ::getpid(), "-")));
  const size_t bytes = (size_t{8} << 20) + 100;  // rounded up to whole 4 KiB pages
  void* p = arena->Allocate(bytes).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kArenaAlignment, 0u);
  const std::optional<ShmArena::Region> r = arena->Find(static_cast<uint8_t*>(p) + 12345);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->base, p);
  EXPECT_EQ(r->bytes, (size_t{8} << 20) + 4096);
  EXPECT_THAT(r->name, StartsWith(arena->name_stem() + "-"));
  EXPECT_FALSE(arena->Find(static_cast<uint8_t*>(p) + r->bytes).has_value());

  struct stat st;
  ASSERT_EQ(::stat(absl::StrCat("/dev/shm", r->name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Pre-faulted: every page is mapped already.
  EXPECT_EQ(ResidentPages(p, r->bytes), r->bytes / 4096);

  const uint8_t* bytes_in = static_cast<const uint8_t*>(p);
  EXPECT_EQ(bytes_in[0], 0);
  EXPECT_EQ(bytes_in[r->bytes - 1], 0);
  std::memset(p, 0x5a, 4096);
  absl::StatusOr<ShmSegment> view = ShmSegment::OpenReadOnly(r->name, /*populate=*/true);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->size(), r->bytes);
  EXPECT_FALSE(view->owner());
  EXPECT_EQ(view->data()[4095], 0x5a);
  EXPECT_TRUE(view->OwnerAlive());

  arena->Free(p, bytes);
  // Unlinked, but the reader's mapping stays readable; the owner's lock is gone with it.
  EXPECT_EQ(ShmSegment::OpenReadOnly(r->name, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(view->data()[0], 0x5a);
  EXPECT_FALSE(view->OwnerAlive());
  EXPECT_FALSE(arena->Find(p).has_value());
}

TEST(ShmArenaTest, BackgroundPrefaultPopulatesEveryPage) {
  auto arena = NewArena(ShmArena::Prefault::kBackground);
  const size_t bytes = size_t{150} << 20;  // three population steps, the last partial
  void* p = arena->Allocate(bytes).value();
  static_cast<uint8_t*>(p)[bytes - 1] = 7;  // usable before population finishes
  arena->WaitPrefaulted();
  EXPECT_EQ(ResidentPages(p, bytes), bytes / 4096);
  EXPECT_EQ(static_cast<uint8_t*>(p)[bytes - 1], 7);
  // Freeing while a region still populates stops its thread.
  void* q = arena->Allocate(size_t{256} << 20).value();
  arena->Free(q, size_t{256} << 20);
  arena->Free(p, bytes);
}

TEST(ShmArenaTest, NoPrefaultLeavesPagesToFirstTouch) {
  auto arena = NewArena(ShmArena::Prefault::kNone);
  void* p = arena->Allocate(size_t{4} << 20).value();
  EXPECT_EQ(ResidentPages(p, size_t{4} << 20), 0u);
  arena->Free(p, size_t{4} << 20);
}

TEST(ShmArenaTest, RejectsBadInput) {
  ShmArena::Options o;
  o.prefix = "bad/prefix";
  EXPECT_EQ(ShmArena::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  auto arena = NewArena(ShmArena::Prefault::kNone);
  EXPECT_EQ(arena->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShmSegment::OpenReadOnly("no-slash", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShmSegment::OpenReadOnly("/livekvtest-does-not-exist", false).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ParsePrefault("sync").value(), ShmArena::Prefault::kSync);
  EXPECT_EQ(ParsePrefault("background").value(), ShmArena::Prefault::kBackground);
  EXPECT_EQ(ParsePrefault("none").value(), ShmArena::Prefault::kNone);
  EXPECT_THAT(std::string(ParsePrefault("lazy").status().message()), HasSubstr("\"lazy\""));
}

TEST(ShmArenaTest, CreateIsExclusive) {
  const std::string name = absl::StrCat("/livekvtest-excl-", ::getpid());
  auto a = ShmSegment::Create(name, 4096, false);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(ShmSegment::Create(name, 4096, false).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(ShmArenaTest, ACrashedCreatorsSegmentsAreRecognisedAndRemoved) {
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Dies without freeing or unlinking, as a SIGKILLed store would.
    auto arena = ShmArena::Create({"livekvtest", ShmArena::Prefault::kSync});
    void* p = (*arena)->Allocate(1 << 16).value();
    std::memset(p, 0x11, 1 << 16);
    const std::string name = (*arena)->Find(p)->name;
    (void)!::write(pipefd[1], name.data(), name.size());
    ::_exit(0);
  }
  ::close(pipefd[1]);
  char buf[256];
  const ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
  ::close(pipefd[0]);
  ASSERT_GT(n, 0);
  const std::string name(buf, n);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);

  absl::StatusOr<ShmSegment> view = ShmSegment::OpenReadOnly(name, false);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_FALSE(view->OwnerAlive());
  EXPECT_EQ(view->data()[100], 0x11);
  // A live arena's segments are left alone; the dead creator's one goes.
  auto live = NewArena(ShmArena::Prefault::kNone);
  void* p = live->Allocate(4096).value();
  EXPECT_GE(RemoveStaleSegments("livekvtest"), 1);
  EXPECT_EQ(ShmSegment::OpenReadOnly(name, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ShmSegment::OpenReadOnly(live->Find(p)->name, false).ok());
  live->Free(p, 4096);
}

TEST(GenerationTableTest, BumpsEveryPageOfARun) {
  std::vector<uint64_t> table(8, 5);
  BumpGenerations(table.data(), 2, 3);
  EXPECT_EQ(table, (std::vector<uint64_t>{5, 5, 6, 6, 6, 5, 5, 5}));
  EXPECT_EQ(LoadGeneration(&table[3]), 6u);
  GenerationReaderFence();
  EXPECT_EQ(LoadGenerationRelaxed(&table[0]), 5u);
  EXPECT_EQ(GenerationTableBytes(1000), 8000u);
}

}  // namespace
}  // namespace livekv
