"""Weights benchmarks on this machine (no GPU here): `thaw weights load --device host`
(store -> decode workers' staging slots -> host memory, every chunk verified) next to reading the same file from the
local disk, both with the page cache dropped."""

import json
import os
import shutil
import subprocess

from bench_common import (RUNS, THAW, WORK, sh, fields, timed, drop_caches, fresh, med)

SYNTH_GIB = int(os.environ.get("THAW_BENCH_WEIGHTS_GIB", "1"))


def synthetic_weights(path, gib):
    """A bf16 safetensors file of random weights, 64 MiB tensors."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import json
    tensor = 64 << 20
    n = gib * (1 << 30) // tensor
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for i in range(n):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [4096, tensor // 8192],
                                        "data_offsets": [off, off + tensor]}
        off += tensor
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _ in range(n):
            f.write(os.urandom(tensor))
    os.rename(path + ".tmp", path)


def weights_host():
    """Rows: (label, file bytes, median thaw s, median baseline s, thaw internal s)."""
    real = subprocess.run(["scripts/weights.sh"], capture_output=True, text=True,
                          env={**os.environ, "THAW_PYTHON": os.environ.get("THAW_PYTHON", "python3")})
    files = []
    if real.returncode == 0 and os.path.exists(real.stdout.strip()):
        files.append(("all-MiniLM-L6-v2 (real weights, F32)", real.stdout.strip()))
    synth = f"{WORK}/weights-src/synthetic-{SYNTH_GIB}g.safetensors"
    synthetic_weights(synth, SYNTH_GIB)
    files.append((f"{SYNTH_GIB} GiB of random BF16 weights", synth))
    rows = []
    for label, path in files:
        src, store = f"{WORK}/weights-one", f"{WORK}/weights-store"
        fresh(src)
        fresh(store)
        os.makedirs(src)
        try:
            os.link(path, f"{src}/w.safetensors")
        except OSError:
            shutil.copy(path, f"{src}/w.safetensors")
        sh(f"{THAW} --store {store} build {src} --tag w")
        thaw_t, base_t, inner = [], [], []
        for _ in range(RUNS):
            drop_caches()
            t, out = timed(f"{THAW} --store {store} weights load w w.safetensors --device host --json")
            thaw_t.append(t)
            inner.append(float(json.loads(out)["seconds"]))
            drop_caches()
            base_t.append(timed(f"cat {path} > /dev/null")[0])
        rows.append((label, os.path.getsize(path), med(thaw_t), med(base_t), med(inner)))
    return rows
