#!/usr/bin/env bash
# Builds livekv_eval (-c opt) and bundles it with the shared libraries a bare Linux x86-64 machine lacks (Abseil,
# etc.; glibc, libstdc++ and libgcc are taken from that machine) and with the model and its evaluation sets, so
# that the evaluation can run on a machine with many cores and no Bazel, such as the GPU machine's 16 CPU cores
# (docs/accuracy.md):
#
#   dist/eval/bin/livekv_eval   RUNPATH $ORIGIN/../lib
#   dist/eval/lib/              its libraries
#   dist/eval/models/tiny/      the committed model and evaluation sets
#   dist/eval.tar.xz            all of the above: what the device tool carries
#
# There:  mkdir -p /tmp/ev && tar -xJf dist/eval.tar.xz -C /tmp/ev && cd /tmp/ev/eval &&
#         LD_LIBRARY_PATH=$PWD/lib OPENBLAS_NUM_THREADS=1 bin/livekv_eval --jobs=16 --threads=1 ...
# (RUNPATH reaches only the binary's own dependencies; the libraries' dependencies need LD_LIBRARY_PATH.)
#
# Usage: tools/eval/bundle_eval.sh [model_dir]     (default models/tiny)
# Env:   BAZEL_OUTPUT_BASE (default: Bazel's), BAZEL (default bazel)
set -euo pipefail

cd "$(dirname "$0")/../.."
MODEL_DIR=${1:-models/tiny}
OUT_DIR=dist/eval
BAZEL=${BAZEL:-bazel}
bz() { if [ -n "${BAZEL_OUTPUT_BASE:-}" ]; then "$BAZEL" --output_base="$BAZEL_OUTPUT_BASE" "$@"; else "$BAZEL" "$@"; fi; }

bz build --symlink_prefix=/ -c opt --config=gpu_bundle //eval:livekv_eval
bin=$(bz info --symlink_prefix=/ -c opt --config=gpu_bundle bazel-bin 2>/dev/null)

rm -rf "$OUT_DIR" "$OUT_DIR.tar.xz"
mkdir -p "$OUT_DIR/bin" "$OUT_DIR/lib" "$OUT_DIR/models"
cp "$bin/eval/livekv_eval" "$OUT_DIR/bin/"
chmod u+w "$OUT_DIR/bin/livekv_eval"
strip --strip-debug "$OUT_DIR/bin/livekv_eval"
provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|libgcc_s\.so)'
ldd "$bin/eval/livekv_eval" | awk '/=>/ && $3 ~ /^\// {print $1, $3}' | while read -r soname lib; do
  if ! [[ "$soname" =~ $provided ]]; then cp -L "$lib" "$OUT_DIR/lib/$soname"; fi
done
chmod u+w "$OUT_DIR"/lib/* 2>/dev/null || true
cp -r "$MODEL_DIR" "$OUT_DIR/models/"
tar -C dist -cf - eval | xz -T0 -6 >"$OUT_DIR.tar.xz"
echo "bundle_eval: $OUT_DIR.tar.xz $(du -h "$OUT_DIR.tar.xz" | cut -f1) ($(ls "$OUT_DIR/lib" | wc -l) libraries)" >&2
