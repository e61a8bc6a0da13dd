#!/usr/bin/env bash
# Runs every benchmark of the project side by side with its baseline and writes
# docs/benchmarks.md. Environment: RUNS (default 5) repetitions, medians reported;
# THAW_BENCH_ONLY=NAME runs one part and prints it. `--quick`: the read-path figures
# only (3 runs each), printed with how long they took, docs untouched. A full run writes
# how long it took into docs/benchmarks.md.
set -euo pipefail
if [ "${1:-}" = "--quick" ]; then
  export THAW_BENCH_ONLY=quick RUNS=${RUNS:-3}
  shift
fi
cd "$(dirname "$0")/.."
CACHE=${THAW_CACHE:-/var/cache/thaw}
for pkg in debootstrap zstd hyperfine wrk fuse3 umoci skopeo docker-registry runc containerd stargz-snapshotter; do
  dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
done
cargo build --release -p thaw-cli -p thaw-benches
mapfile -t roots < <(THAW_ROOTFS_CACHE=$CACHE scripts/rootfs.sh)
export THAW_BIN=$PWD/target/release/thaw THAW_BENCH_BIN=$PWD/target/release/thaw-bench
export THAW_ROOTFS=${roots[0]} THAW_ROOTFS_PLUS=${roots[1]}
# The GPU-style image (several GB, built once) for the thaw run benchmark.
# Only the full run and THAW_BENCH_ONLY=run or ml use it.
case "${THAW_BENCH_ONLY:-}" in
  ""|run|ml|containerd) export THAW_GPU_ROOTFS=${THAW_GPU_ROOTFS:-$(THAW_ROOTFS_CACHE=$CACHE scripts/gpu_image.sh)} ;;
esac
# matplotlib draws the plots; a venv keeps it off the system Python.
VENV=$CACHE/bench-venv
# numpy draws realistic weights and blake3 checks them (bench_weights.py).
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib, numpy, blake3' 2>/dev/null; then
  rm -rf "$VENV"; python3 -m venv "$VENV"; "$VENV/bin/pip" install -q matplotlib numpy blake3
fi
export THAW_PYTHON="$VENV/bin/python"
exec "$VENV/bin/python" scripts/bench.py "$@"
