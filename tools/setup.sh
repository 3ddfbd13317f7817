#!/usr/bin/env bash
# Installs every Debian package livekv needs to build, test and run. Idempotent and non-interactive: when all
# packages are present it changes nothing and returns in well under a second. Usable by CI and by a new user
# (as root, or through sudo when available).
set -euo pipefail

packages=(
  # build
  bazel-bootstrap g++ pkg-config protobuf-compiler protobuf-compiler-grpc
  # libraries
  libabsl-dev libgrpc++-dev libgrpc-dev libprotobuf-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libopenblas-dev libgoogle-glog-dev libucx-dev ucx-utils prometheus-cpp-dev
  libicu-dev
  # scripts and checks
  python3 python3-numpy
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
