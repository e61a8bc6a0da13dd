#!/usr/bin/env bash
# The fault soak (issue 16): scripts/soak.sh [MINUTES] (default 1; CI runs 1, long runs
# are by hand). As root: it mounts a tmpfs for the cache, runs containers with runc and
# drops the page cache. THAW_BIN picks the binary (default target/release/thaw, built if
# missing); THAW_SOAK_OUT where samples.tsv, summary.json and soak.png go; THAW_SOAK_FAULTS
# the injected faults. What it checks is in scripts/soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-1}
export THAW_BIN=${THAW_BIN:-target/release/thaw}
if [ ! -x "$THAW_BIN" ]; then
  cargo build --release -p thaw-cli
fi
for tool in runc busybox; do
  command -v "$tool" >/dev/null || { echo "soak.sh: needs $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root" >&2; exit 1; }
# matplotlib for the plot, from the benchmarks' venv when it is there.
PY=python3
BENCH_VENV=${THAW_BENCH_CACHE:-/var/cache/thaw}/bench-venv
[ -x "$BENCH_VENV/bin/python" ] && PY=$BENCH_VENV/bin/python
exec "$PY" scripts/soak.py "$MINUTES"
