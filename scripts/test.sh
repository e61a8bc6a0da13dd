#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite:
#   Debian packages (debootstrap, zstd, fuse3, attr, umoci, skopeo, docker-registry,
#   runc, crun, redis-server: the autoscaler test starts its own on a free port;
#   containerd, stargz-snapshotter's ctr-remote, and Go with containerd's sources for
#   containerd's own snapshotter test suite: the snapshotter tests start their own), a
#   Python venv with moto[server] as the S3 endpoint, a cached debootstrap root
#   filesystem; then fmt, clippy and
#   cargo test over the workspace with the S3 and rootfs tests enabled (the fuzz corpus
#   replays there too), and the one-minute fault soak (scripts/soak.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${THAW_CACHE:-/var/cache/thaw}
mkdir -p "$CACHE"

log() { echo "== test.sh: $*" >&2; }
# Each phase says how long the one before it took, and the run ends with the total.
T0=$(date +%s)
PHASE_START=$T0
PHASE=setup
phase() {
  local now
  now=$(date +%s)
  echo "== test.sh: phase '$PHASE' took $((now - PHASE_START)) s" >&2
  PHASE=$1
  PHASE_START=$now
  log "$1"
}
# Tests that need root, /dev/fuse or a service this script starts fail instead of
# skipping (thaw_tests::skip); only the GPU tests may still skip.
export THAW_TESTS_STRICT=1
# CI builds once from a fresh clone: incremental state only costs disk (a CI run on a
# nearly full shared disk died in the linker).
export CARGO_INCREMENTAL=0

# --- Debian packages -------------------------------------------------------------
missing=()
for pkg in debootstrap zstd fuse3 attr tar umoci skopeo docker-registry runc crun catatonit \
           busybox-static golang-github-containers-common redis-server containerd stargz-snapshotter \
           golang-go golang-github-containerd-containerd-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- cgroups for crun ---------------------------------------------------------------
# On a hybrid hierarchy (cgroup v1 with a v2 part at /sys/fs/cgroup/unified) crun refuses
# to run while the v2 part holds a controller ("cgroups in hybrid mode not supported,
# drop all controllers from cgroupv2"); runc does not mind. Mounting the v1 hierarchy of
# each such controller takes it off the v2 part, as a systemd in hybrid mode would.
# (Not `[ -s FILE ]`: cgroup files report a size of 0 whatever they hold.)
hybrid=$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null || true)
if [ -n "$hybrid" ]; then
  for c in $hybrid; do
    log "mounting the v1 $c cgroup hierarchy so that crun can run (hybrid host)"
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || log "could not: the crun tests will fail"
  done
fi

# --- moto[server] in a venv ------------------------------------------------------
VENV=$CACHE/venv
if [ ! -x "$VENV/bin/moto_server" ]; then
  log "creating $VENV with moto[server]"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'moto[server]' boto3
fi
# The weights tests' Python side: NumPy arrays over the handed-over memory, and BLAKE3 to
# check `thaw weights load --checksums` independently.
"$VENV/bin/python" -c 'import blake3, numpy' 2>/dev/null || "$VENV/bin/pip" install -q blake3 numpy
export THAW_PYTHON=$VENV/bin/python

# --- debootstrap root filesystem (cached) ------------------------------------------
phase "preparing the debootstrap root filesystem"
# sed, not head: head would exit after one line and rootfs.sh, printing a second,
# would die of SIGPIPE, which pipefail turns into a failure (seen once).
THAW_ROOTFS=$(THAW_ROOTFS_CACHE=$CACHE scripts/rootfs.sh | sed -n 1p)
export THAW_ROOTFS

# --- real model weights (cached) ---------------------------------------------------
phase "fetching real model weights"
if ! THAW_WEIGHTS=$(THAW_PYTHON="$VENV/bin/python" THAW_WEIGHTS_CACHE=$CACHE/weights scripts/weights.sh); then
  log "could not fetch the model weights: the real-weights test will say SKIPPED"
  THAW_WEIGHTS=
fi
export THAW_WEIGHTS

# --- S3 endpoint ---------------------------------------------------------------------
phase "starting moto (S3)"
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$CACHE/moto.log" 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
export AWS_ACCESS_KEY_ID=thaw-test AWS_SECRET_ACCESS_KEY=thaw-test AWS_REGION=us-east-1
export AWS_ENDPOINT=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
  sleep 0.2
done
"$VENV/bin/python" - <<PY
import boto3
boto3.client("s3", endpoint_url="$AWS_ENDPOINT").create_bucket(Bucket="thaw-test")
PY
export THAW_TEST_S3_URL=s3://thaw-test
log "moto S3 on 127.0.0.1:$PORT"

# --- lint and test -------------------------------------------------------------------
phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
phase "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee "$CACHE/test-output.log"
status=${PIPESTATUS[0]}
# The fault soak (issue 16), one minute: several containers' reads checked byte for byte
# under injected store faults, a SIGKILL of the daemon, a removed cache and a full disk.
phase "fault soak (1 minute)"
if THAW_BIN=target/debug/thaw THAW_SOAK_OUT="$CACHE/soak" scripts/soak.sh 1; then
  echo "test result: ok. 1 passed; 0 failed; (fault soak)" >>"$CACHE/test-output.log"
else
  echo "test result: FAILED. 0 passed; 1 failed; (fault soak)" >>"$CACHE/test-output.log"
  status=1
fi
phase "done"
log "total $(( $(date +%s) - T0 )) s"
# One summary line over every test binary, for CI.
passed=$(grep -E '^test result:' "$CACHE/test-output.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' "$CACHE/test-output.log" | awk '{s+=$6} END {print s+0}')
skipped=$(grep -c '^SKIPPED' "$CACHE/test-output.log" || true)
echo "thaw: $passed passed, $failed failed, $skipped skipped"
exit "$status"
