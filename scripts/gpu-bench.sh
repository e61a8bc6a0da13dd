#!/usr/bin/env bash
# The GPU check, run on a GPU machine in one go (see docs/benchmarks.md): the thaw-gpu
# tests against a real driver, then `thaw weights` (chunk store -> pinned buffers -> GPU)
# against reading the same file into memory and copying it (`thaw-bench gpu-baseline`),
# page cache dropped and warm, RUNS times each. Binaries come prebuilt in $BIN (this
# machine may have no crate registry); results go to $OUT.
set -uo pipefail
BIN=${BIN:-gpu-bin}
OUT=${OUT:-/tmp/thaw-gpu-out}
RUNS=${RUNS:-5}
GIB=${GIB:-4}
W=${WORK:-/tmp/thaw-gpu}
mkdir -p "$OUT"
rm -rf "$W" && mkdir -p "$W/src"
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpus: /' | tee -a "$OUT/gpu.txt"

echo "== thaw-gpu tests on the GPU" | tee "$OUT/tests.txt"
"$BIN/thaw-gpu-tests" --test-threads 1 2>&1 | tee -a "$OUT/tests.txt"

echo "== a $GIB GiB bf16 safetensors file of random weights"
python3 - "$W/src/w.safetensors" "$GIB" <<'PY'
import json, os, sys
path, gib = sys.argv[1], int(sys.argv[2])
tensor = 64 << 20
n = gib * (1 << 30) // tensor
header, off = {"__metadata__": {"format": "pt"}}, 0
for i in range(n):
    header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [4096, tensor // 8192], "data_offsets": [off, off + tensor]}
    off += tensor
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(path, "wb") as f:
    f.write(len(h).to_bytes(8, "little"))
    f.write(h)
    for _ in range(n):
        f.write(os.urandom(tensor))
PY
ls -la "$W/src"
"$BIN/thaw" --store "$W/store" build "$W/src" --tag w | tee "$OUT/build.txt"

cat > "$W/st_load.py" <<'PY'
import sys, time
import torch
from safetensors.torch import load_file
torch.zeros(1, device="cuda:0")  # the context exists before timing, as for the others
t = time.perf_counter()
tensors = load_file(sys.argv[1], device="cuda:0")
torch.cuda.synchronize()
s = time.perf_counter() - t
n = sum(v.numel() * v.element_size() for v in tensors.values())
print(f"bytes: {n}\nseconds: {s:.4f}\ngb_per_s: {n / s / 1e9:.3f}")
PY
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(could not drop the page cache)"; }
for mode in cold warm; do
  for i in $(seq 1 "$RUNS"); do
    [ "$mode" = cold ] && drop
    "$BIN/thaw-bench" gpu-baseline "$W/src/w.safetensors" | sed "s/^/baseline $mode $i /" | tee -a "$OUT/runs.txt"
    [ "$mode" = cold ] && drop
    python3 "$W/st_load.py" "$W/src/w.safetensors" 2>&1 | sed "s/^/safetensors_torch $mode $i /" | tee -a "$OUT/runs.txt"
    [ "$mode" = cold ] && drop
    "$BIN/thaw" --store "$W/store" weights w w.safetensors | sed "s/^/thaw $mode $i /" | tee -a "$OUT/runs.txt"
  done
done
echo "== verify: the GPU holds the file's bytes"
"$BIN/thaw" --store "$W/store" weights w w.safetensors --verify | tee "$OUT/verify.txt"
echo "== staging variants (warm)"
for b in "2 16" "4 64" "8 64"; do
  set -- $b
  "$BIN/thaw" --store "$W/store" weights w w.safetensors --buffers "$1" --buffer-mib "$2" | sed "s/^/buffers $1x$2MiB /" | tee -a "$OUT/variants.txt"
done
