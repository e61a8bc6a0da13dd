#!/usr/bin/env bash
# The GPU check, run on a GPU machine in one call (see docs/gpu.md). Binaries come
# prebuilt in $BIN (scripts/gpu-bin.sh; the GPU machine has no crate registry); results go
# to $OUT as each phase finishes, so a phase that runs out of time loses only itself.
#
# Phases, each under its own timeout:
#   1. the thaw-gpu tests against the real driver;
#   2. raw host-to-device bandwidth: pinned and pageable (one large copy, CUDA events);
#   3. a realistic GIB GiB bf16 safetensors file (normal values, as trained weights: they
#      compress a little), built into a local store;
#   4. loads, RUNS each, page cache dropped ("cold") and warm: `thaw weights` from the
#      store, `thaw weights` from a warm disk cache, read+copy (`thaw-bench gpu-baseline`),
#      and `safetensors.torch.load_file(device="cuda:0")` in one long-lived Python process;
#   5. the resident tier, host mode: `thaw serve --resident-weights` prewarmed with the file,
#      a Python client (python/thaw_torch) receives the memfd, pins it and copies to cuda:0;
#   6. per-tensor checksums of the GPU's bytes against the host backend's, slot sizes and
#      worker counts;
#   7. one table, every figure also as a fraction of the raw pinned bandwidth.
set -uo pipefail
BIN=${BIN:-gpu-bin}
OUT=${OUT:-/tmp/thaw-gpu-out}
RUNS=${RUNS:-3}
GIB=${GIB:-4}
W=${WORK:-/tmp/thaw-gpu}
mkdir -p "$OUT"
rm -rf "$W" && mkdir -p "$W/src"
R="$OUT/runs.txt"
: >"$R"
phase() { echo "== $(date +%T) $*" | tee -a "$OUT/phases.txt"; }
drop() {
  sync
  if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo dropped; else echo not-dropped; fi
}

phase machine
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
  echo "cpus: $(nproc)"
  uname -r
  echo "page cache drop: $(drop)"
} 2>&1 | tee "$OUT/gpu.txt"

phase "thaw-gpu tests on the GPU"
timeout 120 "$BIN/thaw-gpu-tests" --test-threads 1 2>&1 | tee "$OUT/tests.txt"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"

phase "raw host-to-device bandwidth"
timeout 90 python3 - <<'PY' 2>&1 | tee -a "$R"
import statistics, torch
n = 1 << 30
dst = torch.empty(n, dtype=torch.uint8, device="cuda:0")
for kind in ("pinned", "pageable"):
    src = torch.ones(n, dtype=torch.uint8)
    if kind == "pinned":
        src = src.pin_memory()
    rates = []
    for i in range(6):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
        b.synchronize()
        if i:
            rates.append(n / (a.elapsed_time(b) / 1e3) / 1e9)
    print(f"raw_{kind} gb_per_s: {statistics.median(rates):.3f}")
PY

phase "a $GIB GiB bf16 safetensors file, built into a store"
timeout 180 python3 - "$W/src/w.safetensors" "$GIB" <<'PY'
import sys, torch
from safetensors.torch import save_file
path, gib = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(7)
per = 64 << 20  # bytes per tensor
tensors = {f"layers.{i}.weight": (torch.randn(4096, per // 8192, generator=g) * 0.02).to(torch.bfloat16)
           for i in range(gib * (1 << 30) // per)}
save_file(tensors, path, metadata={"format": "pt"})
PY
ls -la "$W/src"
timeout 240 "$BIN/thaw" --store "$W/store" build "$W/src" --tag w 2>&1 | tee "$OUT/build.txt"
du -sb "$W/store" | tee -a "$OUT/build.txt"

phase "loads"
cat >"$W/st_load.py" <<'PY'
import os, sys, time, torch
from safetensors.torch import load_file
path, runs = sys.argv[1], int(sys.argv[2])
torch.zeros(1, device="cuda:0")  # the context exists before timing, as for the others
def drop():
    os.sync()
    try:
        open("/proc/sys/vm/drop_caches", "w").write("3")
    except OSError:
        pass
for mode in ("cold", "warm"):
    for i in range(1, runs + 1):
        if mode == "cold":
            drop()
        t = time.perf_counter()
        tensors = load_file(path, device="cuda:0")
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        n = sum(v.numel() * v.element_size() for v in tensors.values())
        print(f"safetensors_torch {mode} {i} gb_per_s: {n / s / 1e9:.3f} seconds: {s:.4f}", flush=True)
        del tensors
        torch.cuda.empty_cache()
PY
timeout 150 python3 "$W/st_load.py" "$W/src/w.safetensors" "$RUNS" 2>&1 | tee -a "$R"
# One run fills the disk cache; later "cache" runs read from it.
timeout 60 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --cache "$W/cache" >/dev/null 2>&1
row() { # name mode i command...
  local name=$1 mode=$2 i=$3
  shift 3
  [ "$mode" = cold ] && drop >/dev/null
  timeout 60 "$@" 2>&1 | grep -E '^(gb_per_s|seconds|Error|error)' | tr '\n' ' ' | sed "s/^/$name $mode $i /;s/\$/\n/" | tee -a "$R"
}
for mode in cold warm; do
  for i in $(seq 1 "$RUNS"); do
    row read_copy "$mode" "$i" "$BIN/thaw-bench" gpu-baseline "$W/src/w.safetensors"
    row thaw_store "$mode" "$i" "$BIN/thaw" --store "$W/store" weights load w w.safetensors
    row thaw_disk_cache "$mode" "$i" "$BIN/thaw" --store "$W/store" weights load w w.safetensors --cache "$W/cache"
  done
done

phase "resident tier, host mode, to cuda:0"
"$BIN/thaw" --store "$W/store" serve --socket "$W/api.sock" --cache "$W/dcache" --state-dir "$W/state" \
  --mount-root "$W/mnt" --ready-file "$W/ready" --resident-weights $((GIB + 2))000000000 \
  --weights-socket "$W/weights.sock" >"$OUT/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 100); do [ -e "$W/ready" ] && break; sleep 0.1; done
timeout 120 "$BIN/thaw" prewarm w --weights w.safetensors --server "unix:$W/api.sock" >/dev/null 2>&1
timeout 120 python3 - "$W/weights.sock" "$RUNS" <<'PY' 2>&1 | tee -a "$R"
import sys, time, torch
sys.path.insert(0, "python")
import thaw_torch
sock, runs = sys.argv[1], int(sys.argv[2])
for i in range(1, runs + 1):
    t = time.perf_counter()
    ts = thaw_torch.load(sock, "w", "w.safetensors", device="cuda:0")
    s = time.perf_counter() - t
    n = sum(v.numel() * v.element_size() for v in ts.values())
    print(f"thaw_resident_host warm {i} gb_per_s: {n / s / 1e9:.3f} seconds: {s:.4f}", flush=True)
    del ts
    torch.cuda.empty_cache()
PY
kill "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null

phase "verify and pipeline variants"
# The GPU's bytes, hashed per tensor after a copy back, against the host backend's (which
# CI checks against the file): equal lists mean the GPU holds exactly the file's tensors.
timeout 90 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --device cuda:0 --checksums >"$OUT/checksums-gpu.txt" 2>&1
timeout 90 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --device host --checksums >"$OUT/checksums-host.txt" 2>&1
if cmp -s "$OUT/checksums-gpu.txt" "$OUT/checksums-host.txt"; then echo "verified: $(wc -l <"$OUT/checksums-gpu.txt") tensors equal" | tee "$OUT/verify.txt"; else echo "VERIFY FAILED" | tee "$OUT/verify.txt"; fi
for s in 16 32 64; do
  row "slots_2x${s}MiB_disk_cache" warm 1 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --cache "$W/cache" --slot-mib "$s"
done
for n in 1 4 8 15; do
  row "workers_${n}_store" warm 1 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --workers "$n"
  row "workers_${n}_disk_cache" warm 1 "$BIN/thaw" --store "$W/store" weights load w w.safetensors --cache "$W/cache" --workers "$n"
done

phase summary
python3 - "$R" <<'PY' | tee "$OUT/summary.md"
import re, statistics, sys
rows, raw = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"raw_(\w+) gb_per_s: ([\d.]+)", line)
    if m:
        raw[m[1]] = float(m[2]); continue
    m = re.match(r"(\S+) (cold|warm) \d+ .*gb_per_s: ([\d.]+)", line)
    if m:
        rows.setdefault((m[1], m[2]), []).append(float(m[3]))
pinned = raw.get("pinned")
print("| what | page cache | runs | median GB/s | x raw pinned |")
print("|---|---|---|---|---|")
for k, v in raw.items():
    print(f"| raw {k} host-to-device copy | - | 5 | {v:.2f} | {v / pinned:.3f} |" if pinned else f"| raw {k} | - | 5 | {v:.2f} | - |")
for (name, mode), v in rows.items():
    med = statistics.median(v)
    frac = f"{med / pinned:.3f}" if pinned else "-"
    print(f"| {name} | {mode} | {len(v)} | {med:.2f} (min {min(v):.2f}, max {max(v):.2f}) | {frac} |")
PY
phase done
