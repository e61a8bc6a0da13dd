#!/usr/bin/env bash
# Runs Miri (the nightly toolchain's interpreter that checks unsafe code for undefined
# behaviour) on the unit tests of the modules with `unsafe` that Miri can execute:
# thaw-store's pooled, aligned read buffers (read/cache/buffers.rs: raw allocation, a
# global pool, read(2) into uninitialised memory).
#
# Not run under Miri, and why: thaw-gpu's cuda.rs (FFI into the CUDA driver), memfd.rs
# (memfd_create and mmap of a file descriptor, which Miri does not emulate) and sink.rs
# (pinned host memory from CUDA); fuse/src/takeover.rs and mount/adopt.rs (pidfd_getfd
# and /dev/fuse). Those are covered by their tests on real kernels and devices.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri.sh: no nightly toolchain with Miri here (rustup +nightly component add miri)" >&2
  exit 1
fi
# Real files are read, so isolation is off.
MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p thaw-store --lib read::cache::buffers
