#!/usr/bin/env python3
"""Draws the loss curve of a training run (train_log.json of tools/train/train_tiny.py) as a PNG, with the Python
standard library only (zlib for the PNG, a 3x5 pixel font, the same as eval/plot.cc's).

Usage: python3 tools/train/plot_loss.py OUT.png LOG.json [LOG2.json ...]
  Several logs are stages of one training run, drawn one after the other (their steps are offset).
"""
import json
import math
import struct
import sys
import zlib

FONT = {
    "A": ".#.#.#####.##.#", "B": "##.#.###.#.###.", "C": ".###..#..#...##", "D": "##.#.##.##.###.",
    "E": "####..##.#..###", "F": "####..##.#..#..", "G": ".###..#.##.#.##", "H": "#.##.#####.##.#",
    "I": "###.#..#..#.###", "J": "..#..#..##.#.#.", "K": "#.##.###.#.##.#", "L": "#..#..#..#..###",
    "M": "#.########.##.#", "N": "##.#.##.##.##.#", "O": ".#.#.##.##.#.#.", "P": "##.#.###.#..#..",
    "Q": ".#.#.##.####.##", "R": "##.#.###.#.##.#", "S": ".###...#...###.", "T": "###.#..#..#..#.",
    "U": "#.##.##.##.####", "V": "#.##.##.##.#.#.", "W": "#.##.########.#", "X": "#.##.#.#.#.##.#",
    "Y": "#.##.#.#..#..#.", "Z": "###..#.#.#..###", "0": "####.##.##.####", "1": ".#.##..#..#.###",
    "2": "##...#.#.#..###", "3": "##...#.#...###.", "4": "#.##.####..#..#", "5": "####..##...###.",
    "6": ".###..####.####", "7": "###..#.#..#..#.", "8": "####.#####.####", "9": "####.####..###.",
    "+": "....#.###.#....", "@": "####.##.##...##", ".": ".............#.", "-": "......###......",
    ":": "....#.....#....", "(": ".#.#..#..#...#.", ")": ".#...#..#..#.#.", "/": "..#..#.#.#..#..",
    ",": "..........#.#..", "%": "#.#..#.#.#..#.#", "=": "...###...###...", " ": "...............",
}


def write_png(path, width, height, pixels):
    """pixels: bytearray of width*height*3 (RGB, row-major)."""
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class Canvas:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.px = bytearray([255]) * (width * height * 3)

    def set(self, x, y, c):
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.px[i:i + 3] = bytes(c)

    def line(self, x0, y0, x1, y1, c, thick=1, dash=0):
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for s in range(steps + 1):
            if dash and (s // dash) % 2:
                continue
            t = s / steps
            x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
            for dx in range(thick):
                for dy in range(thick):
                    self.set(x + dx, y + dy, c)

    def text(self, x, y, s, c=(0, 0, 0)):
        for ch in s.upper():
            g = FONT.get(ch, "#" * 15)
            for i, bit in enumerate(g):
                if bit == "#":
                    for dx in range(2):
                        for dy in range(2):
                            self.set(x + (i % 3) * 2 + dx, y + (i // 3) * 2 + dy, c)
            x += 8


def main():
    out, logs = sys.argv[1], sys.argv[2:]
    points = {"loss": [], "answer_loss": []}
    stage_starts = []
    offset = 0
    for path in logs:
        with open(path) as f:
            log = json.load(f)["log"]
        stage_starts.append(offset)
        for e in log:
            for k in points:
                if k in e and e[k] == e[k]:  # not NaN
                    points[k].append((offset + e["step"], e[k]))
        offset += log[-1]["step"] + 1
    width, height, left, top, pw, ph = 560, 300, 60, 40, 470, 200
    c = Canvas(width, height)
    max_step = max(s for pts in points.values() for s, _ in pts)
    lo, hi = math.log10(1e-3), math.log10(10.0)  # loss on a log scale, 0.001 .. 10

    def xy(step, loss):
        y = (math.log10(max(loss, 1e-3)) - lo) / (hi - lo)
        return left + step / max_step * (pw - 1), top + (1 - min(y, 1.0)) * (ph - 1)
    c.text(4, 4, "training loss (log scale) vs step")
    for v in [0.001, 0.01, 0.1, 1, 10]:
        _, y = xy(0, v)
        c.line(left, y, left + pw - 1, y, (210, 210, 210))
        c.text(4, int(y) - 5, str(v))
    c.line(left, top, left, top + ph - 1, (0, 0, 0))
    c.line(left, top + ph - 1, left + pw - 1, top + ph - 1, (0, 0, 0))
    for s in stage_starts[1:]:
        x, _ = xy(s, 1)
        c.line(x, top, x, top + ph - 1, (0, 0, 0), dash=4)
    for frac in [0, 0.25, 0.5, 0.75, 1]:
        step = int(frac * max_step)
        x, _ = xy(step, 1)
        c.text(int(x) - 4 * len(str(step)), top + ph + 6, str(step))
    c.text(left + pw // 2 - 16, top + ph + 20, "step")
    colors = {"loss": (31, 119, 180), "answer_loss": (214, 39, 40)}
    for k, pts in points.items():
        for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
            c.line(*xy(s0, l0), *xy(s1, l1), colors[k], thick=2)
    c.line(left, height - 14, left + 20, height - 14, colors["loss"], thick=3)
    c.text(left + 28, height - 18, "loss (answer x20)")
    c.line(left + 200, height - 14, left + 220, height - 14, colors["answer_loss"], thick=3)
    c.text(left + 228, height - 18, "answer only")
    if len(stage_starts) > 1:
        c.text(left + pw - 150, top - 14, "--- stage start")
    write_png(out, width, height, c.px)
    print("wrote", out)


if __name__ == "__main__":
    main()
