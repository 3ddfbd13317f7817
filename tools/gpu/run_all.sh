#!/usr/bin/env bash
# Runs ON the GPU machine, from a bundle made by tools/gpu/build_bundle.sh (docs/gpu.md):
#   bash dist/gpu/run_all.sh [name-filter-regex]
# Runs every bundled GPU test, then every benchmark (programs, and Python scripts with python3, e.g. the PyTorch
# baseline); writes full logs to $OUT (if set; else to a temp folder):
#   tests.log, bench.log, summary.txt
# With SANITIZE="name ..." it also runs those tests under compute-sanitizer (sanitize.log): each tool of
# SANITIZE_TOOLS (default memcheck; e.g. "memcheck racecheck"), each run at most SANITIZE_TIMEOUT seconds (default 90).
# and prints a summary table last: per test pass / FAIL / skip with gtest counts; per benchmark its figures with
# their ratio to the ceiling measured in the same run. Exit status: 0 when no test failed.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
FILTER=${1:-.}
LOGS=${OUT:-$(mktemp -d /tmp/livekv_gpu.XXXXXX)}
mkdir -p "$LOGS"
TMP=$(mktemp -d /tmp/livekv_gpu_run.XXXXXX)
: >"$LOGS/tests.log"
: >"$LOGS/bench.log"

# cuBLAS / cuBLASLt 13 from this machine: a CUDA toolkit, the dynamic linker's cache, or PyTorch's wheel.
find_cublas() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib /usr/local/cuda-13*/targets/x86_64-linux/lib; do
    [ -e "$d/libcublasLt.so.13" ] && { echo "$d"; return; }
  done
  d=$(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so\.13 /{print $NF; exit}')
  [ -n "$d" ] && { dirname "$d"; return; }
  d=$(python3 -c 'import nvidia.cublas as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$d" ] && [ -e "$d/libcublasLt.so.13" ] && { echo "$d"; return; }
  d=$(find / -xdev -name 'libcublasLt.so.13' -print -quit 2>/dev/null)
  [ -n "$d" ] && dirname "$d"
}
CUBLAS_DIR=$(find_cublas)
export LD_LIBRARY_PATH="$HERE/lib${CUBLAS_DIR:+:$CUBLAS_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "host: $(uname -srm)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -4
  echo "cuBLAS from: ${CUBLAS_DIR:-NOT FOUND}"
} | tee "$LOGS/summary.txt"

rows=()
failed=0
for t in "$HERE"/tests/*; do
  name=$(basename "$t")
  [[ "$name" =~ $FILTER ]] || continue
  start=$(date +%s.%N)
  timeout "${TEST_TIMEOUT:-300}" "$t" --gtest_color=no >"$TMP/$name.log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$TMP/$name.log" | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$TMP/$name.log" | tail -1)
  nfailed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$TMP/$name.log" | tail -1)
  passed=${passed:-0} skipped=${skipped:-0} nfailed=${nfailed:-0}
  if [ "$rc" -ne 0 ]; then
    status=FAIL
    failed=1
  elif [ "$passed" -eq 0 ] && [ "$skipped" -gt 0 ]; then
    status=skip
  else
    status=pass
  fi
  rows+=("$(printf '%-22s %-5s %4s passed %3s skipped %3s failed  rc %-3s %6ss' "$name" "$status" "$passed" "$skipped" "$nfailed" "$rc" "$secs")")
  { echo "===== $name (rc $rc, ${secs}s)"; cat "$TMP/$name.log"; } >>"$LOGS/tests.log"
  echo "test $name: $status (rc $rc, ${secs}s)"
  if [ "$status" = FAIL ]; then
    # The failing assertions, for the output tail (full log in tests.log).
    grep -E '^\[  FAILED  \]|Failure|error|differ|Expected|Which is|got |CHECK|FATAL|Segmentation|Aborted' "$TMP/$name.log" | head -40
  fi
done

for b in "$HERE"/bench/*; do
  name=$(basename "$b")
  [[ "$name" =~ $FILTER ]] || continue
  start=$(date +%s.%N)
  case "$name" in
    *.py) run=(env PYTHONUNBUFFERED=1 python3 "$b") ;;
    *) run=("$b") ;;
  esac
  timeout "${BENCH_TIMEOUT:-300}" "${run[@]}" >"$TMP/$name.log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  { echo "===== $name (rc $rc, ${secs}s)"; cat "$TMP/$name.log"; } >>"$LOGS/bench.log"
  echo "bench $name: rc $rc (${secs}s)"
  [ "$rc" -ne 0 ] && tail -20 "$TMP/$name.log"
done

srows=()
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in ${SANITIZE_TOOLS:-memcheck}; do
  for name in ${SANITIZE:-}; do
    t="$HERE/tests/$name"
    [ -x "$t" ] || continue
    [ -n "$cs" ] || { srows+=("$name: compute-sanitizer not found"); break 2; }
    start=$(date +%s.%N)
    timeout "${SANITIZE_TIMEOUT:-90}" "$cs" --tool "$tool" --error-exitcode 9 "$t" --gtest_color=no >"$TMP/san.log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    errs=$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$TMP/san.log" || echo "no summary (rc $rc)")
    srows+=("$(printf '%-22s %-10s rc %-3s %6ss  %s' "$name" "$tool" "$rc" "$secs" "$errs")")
    { echo "===== $tool $name (rc $rc, ${secs}s)"; cat "$TMP/san.log"; } >>"$LOGS/sanitize.log"
    [ "$rc" -ne 0 ] && grep -m 20 -E '=========  (Invalid|Uninit|Race|Error|Program hit)|at 0x|SUMMARY' "$TMP/san.log"
  done
done

{
  echo
  echo "== tests"
  for r in "${rows[@]}"; do echo "$r"; done
  echo
  echo "== benchmarks (value, unit, ratio to the ceiling measured in the same run)"
  grep -h '^BENCH' "$LOGS/bench.log" | sed 's/^BENCH //' || echo "(no benchmark figures)"
  if [ "${#srows[@]}" -gt 0 ]; then
    echo
    echo "== compute-sanitizer"
    for r in "${srows[@]}"; do echo "$r"; done
  fi
  echo
  if [ "$failed" -ne 0 ]; then echo "RESULT: some tests FAILED"; else echo "RESULT: no test failed"; fi
} | tee -a "$LOGS/summary.txt"
rm -rf "$TMP"
exit "$failed"
