#!/usr/bin/env bash
# Builds the binaries scripts/gpu-bench.sh runs on a GPU machine (which has no crate
# registry): thaw, thaw-bench and the thaw-gpu test binary, stripped, into gpu-bin/
# (ignored by git; carry it to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p thaw-cli -p thaw-benches
TEST_BIN=$(cargo test --release -q -p thaw-gpu --test load --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])' | tail -n1)
mkdir -p gpu-bin
strip -o gpu-bin/thaw target/release/thaw
strip -o gpu-bin/thaw-bench target/release/thaw-bench
strip -o gpu-bin/thaw-gpu-tests "$TEST_BIN"
du -sh gpu-bin/*
