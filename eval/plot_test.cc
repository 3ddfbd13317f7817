#include "eval/plot.h"

#include <cmath>

#include "eval/png.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

bool Near(const RgbImage& im, int x, int y, std::array<uint8_t, 3> color) {
  for (int dy = -1; dy <= 1; ++dy) {
    for (int dx = -1; dx <= 1; ++dx) {
      if (im.At(x + dx, y + dy) == color) return true;
    }
  }
  return false;
}

TEST(PlotTest, PointsLandWhereTheirBudgetAndAccuracySay) {
  const std::vector<int> budgets = {128, 256, 512, 1024, 2048};
  PlotPanel a{"2048 bytes", 1.0, {{"streaming", {{128, 0.0}, {2048, 1.0}}}, {"quest", {{512, 0.5}}}}};
  PlotPanel b{"4096 bytes", 0.9, {{"quest", {{128, 1.0}}}}};
  const RgbImage im = RenderAccuracyPlot({a, b}, budgets);
  ASSERT_EQ(im.rgb.size(), size_t(im.width) * im.height * 3);
  EXPECT_GE(im.width, PanelLeft(1) + kPlotWidth);
  const int x0 = PanelLeft(0) + 8, x1 = PanelLeft(0) + kPlotWidth - 9, bottom = kPlotTop + kPlotHeight - 1;
  // streaming (series 0): 128 at the bottom left, 2048 at the top right, and the line between them.
  EXPECT_TRUE(Near(im, x0, bottom, SeriesColor(0)));
  EXPECT_TRUE(Near(im, x1, kPlotTop, SeriesColor(0)));
  EXPECT_TRUE(Near(im, x0 + (x1 - x0) / 4, bottom - (bottom - kPlotTop) / 4, SeriesColor(0)));
  // quest (series 1, same colour in both panels): 512 is halfway along the log2 axis, accuracy 0.5 halfway up.
  EXPECT_TRUE(Near(im, (x0 + x1) / 2, (kPlotTop + bottom) / 2 + 1, SeriesColor(1)));
  EXPECT_TRUE(Near(im, PanelLeft(1) + 8, kPlotTop, SeriesColor(1)));
  // Nothing of quest's colour where it has no point.
  EXPECT_FALSE(Near(im, x0, bottom - 10, SeriesColor(1)));
  EXPECT_TRUE(EncodePng(im.width, im.height, im.rgb).ok());
}

}  // namespace
}  // namespace livekv
