#include "services/kvstore/append_plan.h"

#include <algorithm>
#include <memory>
#include <tuple>

#include "common/allocator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/kvstore/kv_test_util.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;
using testing_util::AppendRows;
using testing_util::MakeRows;
using testing_util::PlanClusterings;

// (page_tokens, sink_tokens)
class AppendPlanTest : public ::testing::TestWithParam<std::tuple<int32_t, int32_t>> {
 protected:
  void SetUp() override {
    g_.num_layers = 3;
    g_.num_kv_heads = 2;
    g_.layout = PageLayout{std::get<0>(GetParam()), 6, DType::kF32};
    g_.sink_tokens = std::get<1>(GetParam());
    pool_ = PagePool::Create(&host_, {g_.layout.page_bytes(), 4096 * g_.layout.page_bytes()}).value();
    before_ = SequenceKv::Create(g_, pool_.get()).value();
    after_ = SequenceKv::Create(g_, pool_.get()).value();
  }

  // Appends n tokens to both sequences (the history they share).
  void Both(int64_t n) {
    const testing_util::Rows rows = MakeRows(g_, before_->num_tokens(), n);
    ASSERT_TRUE(AppendRows(before_.get(), rows).ok());
    ASSERT_TRUE(AppendRows(after_.get(), rows).ok());
  }
  // Appends n tokens to `after_` only: before_ is the session, after_ what it will be.
  void AfterOnly(int64_t n) { ASSERT_TRUE(AppendRows(after_.get(), MakeRows(g_, after_->num_tokens(), n)).ok()); }

  void ExpectPagesPredicted(int64_t n) {
    for (int32_t l = 0; l < g_.num_layers; ++l) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        const std::vector<PlannedPage> planned = PagesAfterAppend(*before_, l, h, n);
        const HeadKv& head = after_->head(l, h);
        ASSERT_EQ(static_cast<int32_t>(planned.size()), head.num_pages()) << "layer " << l << " head " << h;
        for (int32_t p = 0; p < head.num_pages(); ++p) {
          EXPECT_EQ(planned[p].first_position, head.page(p).first_position);
          EXPECT_EQ(planned[p].count, head.page(p).count);
        }
      }
    }
  }

  HostAllocator host_;
  KvGeometry g_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<SequenceKv> before_, after_;
};

TEST_P(AppendPlanTest, PredictsPagesAndBytesOfAppendsAcrossSinkAndPageBoundaries) {
  const int32_t P = g_.layout.page_tokens;
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{P - 1}, int64_t{1}, int64_t{2 * P + 1}, int64_t{g_.sink_tokens},
                    int64_t{3 * P}, int64_t{5}}) {
    SCOPED_TRACE(::testing::Message() << "append of " << n << " after " << before_->num_tokens());
    ExpectPagesPredicted(0);
    AfterOnly(n);
    ExpectPagesPredicted(n);
    EXPECT_EQ(PoolBytesAfterAppend(*before_, n, Maintenance{}), after_->pool_bytes());
    ASSERT_TRUE(AppendRows(before_.get(), MakeRows(g_, before_->num_tokens(), n)).ok());
  }
}

TEST_P(AppendPlanTest, ValidatesAndPricesAClusteringOfPagesTheAppendCompletes) {
  const int32_t P = g_.layout.page_tokens;
  Both(g_.sink_tokens + P + 2);  // a partial positional page exists before the append
  const int64_t n = 3 * P;
  AfterOnly(n);
  // Cluster 3 pages, including the one the append completes, on layers 1 and 2; drop one more page.
  Maintenance m = PlanClusterings(*after_, {1, 2}, 3, 4);
  m.drop_pages = 1;
  ASSERT_TRUE(ValidateMaintenanceAfterAppend(*before_, n, m).ok()) << ValidateMaintenanceAfterAppend(*before_, n, m);
  const size_t predicted = PoolBytesAfterAppend(*before_, n, m);
  const size_t free_before = pool_->stats().free_bytes;
  ASSERT_TRUE(TryClusterRuns(pool_.get(), g_.layout, m.clusterings).ok());
  EXPECT_EQ(pool_->stats().free_bytes, free_before);  // the trial leaves the pool as it was
  ASSERT_TRUE(ApplyMaintenance(after_.get(), m).ok());
  EXPECT_EQ(predicted, after_->pool_bytes());
}

TEST_P(AppendPlanTest, RejectsClusteringsThatDoNotFitThePagesAfterTheAppend) {
  const int32_t P = g_.layout.page_tokens;
  Both(g_.sink_tokens + 2 * P);
  const int64_t n = P + 1;
  AfterOnly(n);
  const Maintenance good = PlanClusterings(*after_, {0}, 2, 3);
  ASSERT_TRUE(ValidateMaintenanceAfterAppend(*before_, n, good).ok());
  // Valid only after the append: the same plan with no rows is rejected when it covers pages the rows create.
  const Maintenance later = PlanClusterings(*after_, {0}, 3, 3);
  EXPECT_TRUE(ValidateMaintenanceAfterAppend(*before_, n, later).ok());
  EXPECT_EQ(ValidateMaintenanceAfterAppend(*before_, 0, later).code(), absl::StatusCode::kInvalidArgument);

  auto expect_invalid = [&](const Maintenance& m, const std::string& text) {
    const absl::Status s = ValidateMaintenanceAfterAppend(*before_, n, m);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(s.message()), HasSubstr(text));
  };
  Maintenance m = good;
  m.clusterings[0].clusters[0].positions[0] = m.clusterings[0].clusters[0].positions[1];  // repeated position
  expect_invalid(m, "lists position");
  m = good;
  m.clusterings[1].clusters[0].positions.push_back(100000);  // outside the pages
  expect_invalid(m, "lists position 100000");
  m = good;
  m.clusterings[0].clusters.pop_back();  // its tokens are missing
  expect_invalid(m, "clusters hold");
  m = good;
  m.clusterings[0].clusters[0].centroid.pop_back();
  expect_invalid(m, "centroid has 5 values, head_dim is 6");
  m = good;
  m.clusterings[0].num_pages = 100;
  expect_invalid(m, "clustering.num_pages");
  m = good;
  m.clusterings[0].kv_head = 7;
  expect_invalid(m, "outside the session's geometry");
  m = good;
  m.clusterings.push_back(m.clusterings[0]);
  expect_invalid(m, "clustered twice");
  m = good;
  m.clusterings.pop_back();
  expect_invalid(m, "head 1 is missing");
  m = good;
  m.drop_pages = -1;
  expect_invalid(m, "drop_pages");
  m = good;
  m.clusterings[0].clusters[0].positions.clear();
  expect_invalid(m, "is empty");
}

TEST_P(AppendPlanTest, TryClusterRunsFailsWhenThePoolCannotHoldTheRuns) {
  const int32_t P = g_.layout.page_tokens;
  // A pool with room for the sequence and little else.
  auto small = PagePool::Create(&host_, {g_.layout.page_bytes(), 64 * g_.layout.page_bytes()}).value();
  auto kv = SequenceKv::Create(g_, small.get()).value();
  ASSERT_TRUE(AppendRows(kv.get(), MakeRows(g_, 0, g_.sink_tokens + 6 * P)).ok());
  const Maintenance m = PlanClusterings(*kv, {0, 1, 2}, 6, 6);
  const size_t free_before = small->stats().free_bytes;
  size_t run_bytes = 0;
  for (const HeadClustering& c : m.clusterings) {
    for (const ClusterSpec& spec : c.clusters) run_bytes += g_.layout.PagesFor(spec.positions.size()) * g_.layout.page_bytes();
  }
  const absl::Status s = TryClusterRuns(small.get(), g_.layout, m.clusterings);
  EXPECT_EQ(small->stats().free_bytes, free_before);
  if (run_bytes > free_before) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(s.message()), HasSubstr("KV pool full"));
    EXPECT_EQ(ApplyMaintenance(kv.get(), m).code(), absl::StatusCode::kResourceExhausted);
  } else {
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(ApplyMaintenance(kv.get(), m).ok());
  }
}

TEST_P(AppendPlanTest, TryClusterRunsPredictsExactlyWhetherApplyClusteringFits) {
  // Pools of every size around the threshold: the trial's answer must match what ApplyClustering then does.
  const int32_t P = g_.layout.page_tokens;
  for (int extra = 0; extra < 40; extra += 3) {
    const size_t base_pages = g_.num_layers * g_.num_kv_heads * (g_.layout.PagesFor(g_.sink_tokens) + 4);
    auto pool = PagePool::Create(&host_, {g_.layout.page_bytes(), (base_pages + extra) * g_.layout.page_bytes()})
                    .value();
    auto kv = SequenceKv::Create(g_, pool.get()).value();
    ASSERT_TRUE(AppendRows(kv.get(), MakeRows(g_, 0, g_.sink_tokens + 4 * P)).ok());
    const Maintenance m = PlanClusterings(*kv, {0, 1, 2}, 4, 3);
    const bool fits = TryClusterRuns(pool.get(), g_.layout, m.clusterings).ok();
    EXPECT_EQ(fits, kv->ApplyClustering(m.clusterings).ok()) << "extra pages " << extra;
  }
}

INSTANTIATE_TEST_SUITE_P(Geometries, AppendPlanTest,
                         ::testing::Values(std::make_tuple(4, 4), std::make_tuple(5, 3), std::make_tuple(3, 0),
                                           std::make_tuple(7, 16), std::make_tuple(1, 1)));

}  // namespace
}  // namespace livekv
