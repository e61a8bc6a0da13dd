#!/usr/bin/env bash
# Runs containerd's own snapshotter test suite (containerd 1.6's snapshots/testsuite, from
# Debian's golang-github-containerd-containerd-dev, built with Debian's Go in GOPATH mode)
# against `thaw snapshotter serve`. Usage: scripts/containerd-testsuite.sh [THAW_BIN]
# Needs root (the suite mounts what the snapshotter returns).
set -euo pipefail
cd "$(dirname "$0")/.."
THAW_BIN=$(realpath "${1:-target/release/thaw}")
for pkg in golang-go golang-github-containerd-containerd-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || { echo "containerd-testsuite: needs $pkg (apt-get install $pkg)" >&2; exit 2; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src/thawsuite"
cp scripts/containerd-testsuite/thaw_test.go "$WORK/src/thawsuite/"
cd "$WORK/src/thawsuite"
GOPATH="$WORK:/usr/share/gocode" GO111MODULE=off GOCACHE="${GOCACHE:-/var/cache/thaw/go-build}" \
  THAW_BIN="$THAW_BIN" go test -count=1 -v . 2>&1 | tee "$WORK/out.txt" | grep -E "^ *(--- |PASS|FAIL|ok)" || true
grep -q "^ok" "$WORK/out.txt"
