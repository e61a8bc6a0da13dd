#!/usr/bin/env bash
# Compares two builds of thaw side by side in one run (scripts/bench_ab.py): A is the
# binary given (for example one built from the commit before a change), B is this tree's
# release build. Usage, as root: scripts/bench_ab.sh /path/to/thaw-A [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${THAW_CACHE:-/var/cache/thaw}
A=${1:?usage: scripts/bench_ab.sh /path/to/thaw-A [ROUNDS]}
cargo build --release -q -p thaw-cli
roots=$(THAW_ROOTFS_CACHE=$CACHE scripts/rootfs.sh | sed -n 1p)
export THAW_A=$A THAW_B=$PWD/target/release/thaw ROUNDS=${2:-5}
export THAW_BIN=$THAW_B THAW_BENCH_BIN=/bin/false THAW_ROOTFS=$roots THAW_ROOTFS_PLUS=$roots
cd scripts && exec python3 bench_ab.py
