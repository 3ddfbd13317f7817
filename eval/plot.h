// File: eval/plot.h
//
// The evaluation's plot: accuracy against KV budget, one panel per context length, one line per policy (budgets
// on a log2 axis, accuracy 0..1), full attention as a dashed reference line, a legend below. Drawn into an RGB
// image with a 3x5 pixel font (scaled 2x); eval/png.h encodes it. Pure functions; thread-safe.
//
//   PlotPanel panel{"2048 bytes", /*reference=*/1.0, {{"quest", {{128, 0.4}, {256, 0.9}}}}};
//   RgbImage image = RenderAccuracyPlot({panel}, {128, 256});
//   LIVEKV_ASSIGN_OR_RETURN(std::string png, EncodePng(image.width, image.height, image.rgb));
#ifndef LIVEKV_EVAL_PLOT_H_
#define LIVEKV_EVAL_PLOT_H_

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace livekv {

struct PlotSeries {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (budget, accuracy in [0, 1])
};

struct PlotPanel {
  std::string title;
  double reference = -1;  // full attention's accuracy, drawn dashed; negative: none
  std::vector<PlotSeries> series;
};

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
  std::array<uint8_t, 3> At(int x, int y) const {
    const size_t i = (static_cast<size_t>(y) * width + x) * 3;
    return {rgb[i], rgb[i + 1], rgb[i + 2]};
  }
};

// Layout, exposed for tests: panel p's plotting area spans x in [PanelLeft(p), PanelLeft(p) + kPlotWidth) and
// y in [kPlotTop, kPlotTop + kPlotHeight) (accuracy 1 at the top row, 0 at the bottom one).
inline constexpr int kPlotWidth = 260, kPlotHeight = 180, kPlotTop = 40, kPanelWidth = 330;
inline int PanelLeft(int panel) { return 50 + panel * kPanelWidth; }
// Colour of series i (the same index in every panel).
std::array<uint8_t, 3> SeriesColor(int i);

// REQUIRES: budgets non-empty, ascending and positive; points' budgets among them.
RgbImage RenderAccuracyPlot(const std::vector<PlotPanel>& panels, const std::vector<int>& budgets);

}  // namespace livekv

#endif  // LIVEKV_EVAL_PLOT_H_
