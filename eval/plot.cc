#include "eval/plot.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace {

// 3x5 glyphs, rows top to bottom, '#' set. Lower case is drawn as upper case.
const std::map<char, const char*>& Font() {
  static const auto* font = new std::map<char, const char*>{
      {'A', ".#.#.#####.##.#"}, {'B', "##.#.###.#.###."}, {'C', ".###..#..#...##"}, {'D', "##.#.##.##.###."},
      {'E', "####..##.#..###"}, {'F', "####..##.#..#.."}, {'G', ".###..#.##.#.##"}, {'H', "#.##.#####.##.#"},
      {'I', "###.#..#..#.###"}, {'J', "..#..#..##.#.#."}, {'K', "#.##.###.#.##.#"}, {'L', "#..#..#..#..###"},
      {'M', "#.########.##.#"}, {'N', "##.#.##.##.##.#"}, {'O', ".#.#.##.##.#.#."}, {'P', "##.#.###.#..#.."},
      {'Q', ".#.#.##.####.##"}, {'R', "##.#.###.#.##.#"}, {'S', ".###...#...###."}, {'T', "###.#..#..#..#."},
      {'U', "#.##.##.##.####"}, {'V', "#.##.##.##.#.#."}, {'W', "#.##.########.#"}, {'X', "#.##.#.#.#.##.#"},
      {'Y', "#.##.#.#..#..#."}, {'Z', "###..#.#.#..###"}, {'0', "####.##.##.####"}, {'1', ".#.##..#..#.###"},
      {'2', "##...#.#.#..###"}, {'3', "##...#.#...###."}, {'4', "#.##.####..#..#"}, {'5', "####..##...###."},
      {'6', ".###..####.####"}, {'7', "###..#.#..#..#."}, {'8', "####.#####.####"}, {'9', "####.####..###."},
      {'+', "....#.###.#...."}, {'@', "####.##.##...##"}, {'.', ".............#."}, {'-', "......###......"},
      {':', "....#.....#...."}, {'(', ".#.#..#..#...#."}, {')', ".#...#..#..#.#."}, {'/', "..#..#.#.#..#.."},
      {',', "..........#.#.."}, {'%', "#.#..#.#.#..#.#"}, {'=', "...###...###..."}, {' ', "..............."},
  };
  return *font;
}

class Canvas {
 public:
  Canvas(int w, int h) : image_{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3, 255)} {}
  void Set(int x, int y, std::array<uint8_t, 3> c) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
    const size_t i = (static_cast<size_t>(y) * image_.width + x) * 3;
    image_.rgb[i] = c[0];
    image_.rgb[i + 1] = c[1];
    image_.rgb[i + 2] = c[2];
  }
  void Rect(int x0, int y0, int x1, int y1, std::array<uint8_t, 3> c) {
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) Set(x, y, c);
    }
  }
  // A line `thick` pixels wide; with dash > 0, drawn `dash` pixels on, `dash` off.
  void Line(double x0, double y0, double x1, double y1, std::array<uint8_t, 3> c, int thick, int dash = 0) {
    const int steps = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int s = 0; s <= steps; ++s) {
      if (dash > 0 && (s / dash) % 2 == 1) continue;
      const double t = double(s) / steps;
      const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0))), y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
      Rect(x - (thick - 1) / 2, y - (thick - 1) / 2, x + thick / 2, y + thick / 2, c);
    }
  }
  // Text with its top-left corner at (x, y), 2x scaled glyphs; returns the width drawn.
  int Text(int x, int y, const std::string& s, std::array<uint8_t, 3> c) {
    int cx = x;
    for (char ch : s) {
      auto it = Font().find(static_cast<char>(std::toupper(static_cast<unsigned char>(ch))));
      const char* g = it == Font().end() ? "###############" : it->second;
      for (int i = 0; i < 15 && g[i] != '\0'; ++i) {
        if (g[i] == '#') Rect(cx + (i % 3) * 2, y + (i / 3) * 2, cx + (i % 3) * 2 + 1, y + (i / 3) * 2 + 1, c);
      }
      cx += 8;
    }
    return cx - x;
  }
  RgbImage Take() { return std::move(image_); }

 private:
  RgbImage image_;
};

constexpr std::array<uint8_t, 3> kBlack = {0, 0, 0}, kGrey = {200, 200, 200};

}  // namespace

std::array<uint8_t, 3> SeriesColor(int i) {
  static const std::array<uint8_t, 3> colors[] = {
      {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189}, {140, 86, 75}, {227, 119, 194}};
  return colors[i % 7];
}

RgbImage RenderAccuracyPlot(const std::vector<PlotPanel>& panels, const std::vector<int>& budgets) {
  std::vector<std::string> labels;
  for (const PlotPanel& p : panels) {
    for (const PlotSeries& s : p.series) {
      if (std::find(labels.begin(), labels.end(), s.label) == labels.end()) labels.push_back(s.label);
    }
  }
  const int width = PanelLeft(static_cast<int>(std::max<size_t>(panels.size(), 1))) - kPanelWidth + kPlotWidth + 30;
  const int per_row = std::max(1, (width - PanelLeft(0)) / 180);
  const int legend_rows = static_cast<int>((labels.size() + per_row - 1) / per_row) + 1;
  const int height = kPlotTop + kPlotHeight + 50 + legend_rows * 20;
  Canvas canvas(width, height);
  const double lo = std::log2(budgets.front()), hi = std::log2(budgets.back());
  auto x_of = [&](int panel, double budget) {
    const double f = hi > lo ? (std::log2(budget) - lo) / (hi - lo) : 0.5;
    return PanelLeft(panel) + 8 + f * (kPlotWidth - 17);
  };
  auto y_of = [&](double acc) { return kPlotTop + (1.0 - std::clamp(acc, 0.0, 1.0)) * (kPlotHeight - 1); };
  for (size_t p = 0; p < panels.size(); ++p) {
    const int left = PanelLeft(static_cast<int>(p));
    canvas.Text(left, kPlotTop - 22, panels[p].title, kBlack);
    for (double a : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      canvas.Line(left, y_of(a), left + kPlotWidth - 1, y_of(a), kGrey, 1);
      if (p == 0) canvas.Text(left - 40, static_cast<int>(y_of(a)) - 5, absl::StrCat(a), kBlack);
    }
    canvas.Line(left, kPlotTop, left, kPlotTop + kPlotHeight - 1, kBlack, 1);
    canvas.Line(left, kPlotTop + kPlotHeight - 1, left + kPlotWidth - 1, kPlotTop + kPlotHeight - 1, kBlack, 1);
    for (int b : budgets) {
      const int x = static_cast<int>(std::lround(x_of(static_cast<int>(p), b)));
      const std::string label = absl::StrCat(b);
      canvas.Line(x, kPlotTop + kPlotHeight - 1, x, kPlotTop + kPlotHeight + 3, kBlack, 1);
      canvas.Text(x - static_cast<int>(label.size()) * 4, kPlotTop + kPlotHeight + 7, label, kBlack);
    }
    canvas.Text(left + kPlotWidth / 2 - 24, kPlotTop + kPlotHeight + 22, "budget", kBlack);
    if (panels[p].reference >= 0) {
      canvas.Line(left, y_of(panels[p].reference), left + kPlotWidth - 1, y_of(panels[p].reference), kBlack, 1, 4);
    }
    for (const PlotSeries& s : panels[p].series) {
      const int ci = static_cast<int>(std::find(labels.begin(), labels.end(), s.label) - labels.begin());
      const auto color = SeriesColor(ci);
      for (size_t i = 0; i < s.points.size(); ++i) {
        const double x = x_of(static_cast<int>(p), s.points[i].first), y = y_of(s.points[i].second);
        if (i > 0) canvas.Line(x_of(static_cast<int>(p), s.points[i - 1].first), y_of(s.points[i - 1].second), x, y, color, 2);
        canvas.Rect(static_cast<int>(x) - 3, static_cast<int>(y) - 3, static_cast<int>(x) + 3, static_cast<int>(y) + 3, color);
      }
    }
  }
  // Legend: the dashed line, then one swatch per series, as many to a row as fit.
  const int legend_top = kPlotTop + kPlotHeight + 40;
  canvas.Line(PanelLeft(0), legend_top + 4, PanelLeft(0) + 20, legend_top + 4, kBlack, 1, 4);
  canvas.Text(PanelLeft(0) + 28, legend_top, "full attention", kBlack);
  for (size_t i = 0; i < labels.size(); ++i) {
    const int x = PanelLeft(0) + static_cast<int>(i % per_row) * 180;
    const int y = legend_top + 20 + static_cast<int>(i / per_row) * 20;
    canvas.Rect(x, y, x + 20, y + 8, SeriesColor(static_cast<int>(i)));
    canvas.Text(x + 28, y, labels[i], kBlack);
  }
  return canvas.Take();
}

}  // namespace livekv
