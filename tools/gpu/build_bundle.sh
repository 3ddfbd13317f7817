#!/usr/bin/env bash
# Builds every GPU test and GPU benchmark here (-c opt, --config=gpu_bundle) and bundles them, with the shared
# libraries the GPU machine lacks, into a git-ignored folder that the device tool carries (docs/gpu.md):
#
#   dist/gpu/tests/<name>   gtest binaries (tags = ["gpu"], kind cc_test)
#   dist/gpu/bench/<name>   benchmark programs (tags = ["gpu"], kind cc_binary) and tools/gpu/*.py scripts
#   dist/gpu/lib/           their shared libraries except those the GPU machine provides (glibc, libstdc++,
#                           libgcc, the CUDA driver and cuBLAS: run_all.sh finds that machine's own cuBLAS)
#   dist/gpu/run_all.sh     the runner (runs there)
#   dist/gpu.tar.xz         all of the above in one archive: what the device tool carries
#
# The CUDA runtime is linked statically. Binaries carry RUNPATH $ORIGIN/../lib. Fails if the bundle would exceed
# the device tool's 64 MiB limit (compressed; the working tree travels too, ~27 MiB).
#
# Usage: tools/gpu/build_bundle.sh [out_dir]      (default dist/gpu)
# Env:   BAZEL_OUTPUT_BASE (default /tmp/bazel_cuda), BAZEL (default bazel)
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT_DIR=${1:-dist/gpu}
OUTPUT_BASE=${BAZEL_OUTPUT_BASE:-/tmp/bazel_cuda}
BAZEL=${BAZEL:-bazel}
LIMIT_BYTES=$((64 * 1024 * 1024))
bz() { "$BAZEL" --output_base="$OUTPUT_BASE" "$@"; }

if [ ! -x /usr/local/cuda/bin/nvcc ] && [ -z "${LIVEKV_CUDA_PATH:-}" ]; then
  echo "build_bundle: no CUDA toolkit (/usr/local/cuda/bin/nvcc); nothing to bundle" >&2
  exit 1
fi

# Every top-level folder except Bazel's convenience symlinks (another output base's bazel-* links would be walked
# into by //...), build outputs and folders without packages.
scope=$(for d in */; do d=${d%/}; case "$d" in bazel-*|dist|out) ;; *) [ -L "$d" ] || [ -z "$(find "$d" -name BUILD -o -name BUILD.bazel | head -1)" ] || echo "//$d/..." ;;
        esac; done |
        paste -sd+ | sed 's/+/ + /g')
tests=$(bz query --noshow_progress "attr(tags, '\bgpu\b', kind('cc_test rule', $scope))")
benches=$(bz query --noshow_progress "attr(tags, '\bgpu\b', kind('cc_binary rule', $scope))")
echo "build_bundle: $(echo "$tests" | wc -w) tests, $(echo "$benches" | wc -w) benchmarks" >&2
# shellcheck disable=SC2086
bz build --symlink_prefix=/ -c opt --config=gpu_bundle $tests $benches
bin=$(bz info --symlink_prefix=/ -c opt --config=gpu_bundle bazel-bin 2>/dev/null)

rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR/tests" "$OUT_DIR/bench" "$OUT_DIR/lib"

# Libraries the GPU machine (Ubuntu 24.04, CUDA 13 driver and toolkit, PyTorch) provides itself.
provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcublas|libcublasLt|libcudart|libnvidia)'

copy_binary() {  # label, destination folder
  local label=$1 dest=$2
  local path="$bin/$(echo "${label#//}" | tr ':' '/')"
  local name
  name=$(basename "$path")
  if [ -e "$dest/$name" ]; then
    echo "build_bundle: two targets named $name; rename one" >&2
    exit 1
  fi
  cp "$path" "$dest/$name"
  chmod u+w "$dest/$name"
  strip --strip-debug "$dest/$name"
  # Shared libraries, by soname, that the GPU machine lacks.
  ldd "$path" | awk '/=>/ && $3 ~ /^\// {print $1, $3}' | while read -r soname lib; do
    if ! [[ "$soname" =~ $provided ]] && [ ! -e "$OUT_DIR/lib/$soname" ]; then
      cp -L "$lib" "$OUT_DIR/lib/$soname"
    fi
  done
  if ldd "$path" | grep -q "not found"; then
    echo "build_bundle: $label has unresolved libraries here:" >&2
    ldd "$path" | grep "not found" >&2
    exit 1
  fi
}

for t in $tests; do copy_binary "$t" "$OUT_DIR/tests"; done
for b in $benches; do copy_binary "$b" "$OUT_DIR/bench"; done
chmod u+w "$OUT_DIR"/lib/* 2>/dev/null || true
strip --strip-debug "$OUT_DIR"/lib/* 2>/dev/null || true
cp tools/gpu/*.py "$OUT_DIR/bench/"
cp tools/gpu/run_all.sh "$OUT_DIR/run_all.sh"
chmod +x "$OUT_DIR/run_all.sh"

# RUNPATH check: the binaries must find lib/ next to them.
for f in "$OUT_DIR"/tests/* "$OUT_DIR"/bench/*; do
  case "$f" in *.py) continue ;; esac
  if ! readelf -d "$f" | grep -q 'RUNPATH.*\$ORIGIN/../lib'; then
    echo "build_bundle: $f lacks RUNPATH \$ORIGIN/../lib (is --config=gpu_bundle in .bazelrc?)" >&2
    exit 1
  fi
done

# The device tool counts the working tree plus what is carried; the binaries (mostly cubins) compress about 8x,
# so the bundle travels as one xz archive next to the folder.
rm -f "$OUT_DIR.tar.xz"
tar -C "$(dirname "$OUT_DIR")" -cf - "$(basename "$OUT_DIR")" | xz -T0 -6 >"$OUT_DIR.tar.xz"
total=$(du -sb "$OUT_DIR" | cut -f1)
packed=$(du -sb "$OUT_DIR.tar.xz" | cut -f1)
echo "build_bundle: $OUT_DIR is $((total / 1024 / 1024)) MiB ($total bytes), $OUT_DIR.tar.xz $((packed / 1024 / 1024)) MiB:" >&2
du -sh "$OUT_DIR"/tests "$OUT_DIR"/bench "$OUT_DIR"/lib >&2
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
echo "build_bundle: working tree $((tree / 1024 / 1024)) MiB + archive $((packed / 1024 / 1024)) MiB travel" >&2
if [ $((packed + tree)) -gt "$LIMIT_BYTES" ]; then
  echo "build_bundle: over the device tool's 64 MiB limit" >&2
  exit 1
fi
echo "build_bundle: done. On the device tool: carry [\"$OUT_DIR.tar.xz\"], command:" >&2
echo "  mkdir -p /tmp/lk && tar -xJf $OUT_DIR.tar.xz -C /tmp/lk && bash /tmp/lk/$(basename "$OUT_DIR")/run_all.sh" >&2
