"""Weights benchmarks on this machine (no GPU here), written to docs/weights-results.md.

One realistic safetensors file (bf16, normal-distributed values as trained weights have,
which compress a little; THAW_BENCH_WEIGHTS_GIB GiB, default 1) and the real
all-MiniLM-L6-v2 weights, each loaded into a distinct destination buffer in host memory:

- `cat FILE > /dev/null` and a plain read into memory (Python `readinto` of one buffer):
  the baselines, page cache warm;
- `thaw weights load --device host` from a filled disk cache (its files in the page
  cache, as on a warm node), and from the store (packs in the page cache: decompress and
  verify every chunk);
- from the daemon's resident tier: a Python client receives the memfd over the weights
  socket, maps it and copies every tensor into its own buffer (no zero-copy shortcut).

Medians of RUNS runs, run in turns so that no variant always goes first. After timing,
the destination's checksums are compared with the file's (`--checksums`, and BLAKE3 in
Python for the resident copy), so every figure is of bytes known to be right."""

import json
import os
import shutil
import subprocess
import sys
import time

from bench_common import RUNS, THAW, WORK, sh, timed, fresh, med

GIB = int(os.environ.get("THAW_BENCH_WEIGHTS_GIB", "1"))
PY = os.environ.get("THAW_PYTHON", sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_MD = os.path.join(os.path.dirname(os.environ.get("THAW_BENCH_OUT", "docs/benchmarks.md")),
                      "weights-results.md")


def realistic_bf16(path, gib):
    """bf16 weights ~ N(0, 0.02), 64 MiB tensors (NumPy draws them, in pieces)."""
    if os.path.exists(path):
        return
    import numpy as np
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensor = 64 << 20
    n = max(1, gib * (1 << 30) // tensor)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for i in range(n):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [4096, tensor // 8192],
                                        "data_offsets": [off, off + tensor]}
        off += tensor
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(7)
    with open(path + ".tmp", "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _ in range(n):
            x = rng.normal(0.0, 0.02, tensor // 2).astype(np.float32)
            f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    os.rename(path + ".tmp", path)


# Every destination is allocated, and its pages touched, before the clock starts: on a
# GPU it would be device memory allocated beforehand, and on this VM first-touch page
# faults of fresh memory cost 0.2-2 s per GiB, varying run to run, more than any copy.
PREFAULTED = """
import mmap
def prefaulted(n):
    return mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
"""

READ_INTO = PREFAULTED + """
import sys, time
path = sys.argv[1]
import os
size = os.path.getsize(path)
buf = prefaulted(size)
t = time.perf_counter()
with open(path, "rb", buffering=0) as f:
    view, got = memoryview(buf), 0
    while got < size:
        n = f.readinto(view[got:size])
        if not n:
            break
        got += n
print(time.perf_counter() - t)
"""

# The ceiling of any copy into a distinct buffer here: one memcpy of the file's length
# between two buffers already in memory (one core, as the Python copies are).
MEMCPY = PREFAULTED + """
import sys, time, os
size = os.path.getsize(sys.argv[1])
src, dst = prefaulted(size), prefaulted(size)
t = time.perf_counter()
memoryview(dst)[:size] = memoryview(src)[:size]
print(time.perf_counter() - t)
"""

RESIDENT_COPY = PREFAULTED + """
import sys, time
sys.path.insert(0, sys.argv[1])
import thaw_torch
sock, image, path, total = sys.argv[2:6]
dst = prefaulted(int(total))
t = time.perf_counter()
h = thaw_torch.request(sock, image, path)
view, at = memoryview(dst), 0
for name, dtype, shape, buf in h.tensors():
    view[at:at + len(buf)] = buf
    at += len(buf)
s = time.perf_counter() - t
print(s)
if len(sys.argv) > 6:
    import blake3
    at = 0
    for name, dtype, shape, buf in h.tensors():
        print(name, blake3.blake3(view[at:at + len(buf)]).hexdigest())
        at += len(buf)
"""


class Daemon:
    """`thaw serve` with a resident tier and a weights socket, over `store`."""

    def __init__(self, store, work):
        self.dir = f"{work}/daemon"
        fresh(self.dir)
        os.makedirs(self.dir)
        self.sock = f"{self.dir}/weights.sock"
        self.api = f"{self.dir}/thaw.sock"
        ready = f"{self.dir}/ready"
        self.proc = subprocess.Popen(
            [THAW, "--store", store, "serve", "--socket", self.api, "--cache", f"{self.dir}/cache",
             "--state-dir", f"{self.dir}/state", "--mount-root", f"{self.dir}/mnt",
             "--ready-file", ready, "--resident-weights", str(8 << 30),
             "--weights-socket", self.sock],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/log", "w"))
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(open(f"{self.dir}/log").read())
            time.sleep(0.05)

    def prewarm(self, path):
        sh(f"{THAW} prewarm w --weights {path} --server unix:{self.api}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


ALLOCATE = {"disk_cache": [], "store": []}


def load_seconds(store, path, cache=None):
    """thaw's load time after its destination is allocated (that time kept apart)."""
    cmd = f"{THAW} --store {store} weights load w {path} --device host --json"
    if cache:
        cmd += f" --cache {cache}"
    r = json.loads(sh(cmd))
    ALLOCATE["disk_cache" if cache else "store"].append(r["allocate_seconds"])
    return r["seconds"] - r["allocate_seconds"]


def checksums_ok(store, path, src_file, cache):
    ours = sh(f"{THAW} --store {store} weights load w {path} --device host --checksums --cache {cache}")
    theirs = sh(f"{PY} {REPO}/python/tests/checksums.py {src_file}")
    return sorted(ours.splitlines()) == sorted(theirs.splitlines())


def bench_file(label, src_file):
    src, store, cache = f"{WORK}/weights-one", f"{WORK}/weights-store", f"{WORK}/weights-cache"
    for d in (src, store, cache):
        fresh(d)
    os.makedirs(src)
    try:
        os.link(src_file, f"{src}/w.safetensors")
    except OSError:
        shutil.copy(src_file, f"{src}/w.safetensors")
    sh(f"{THAW} --store {store} build {src} --tag w")
    load_seconds(store, "w.safetensors", cache)  # fills the disk cache
    daemon = Daemon(store, WORK)
    try:
        daemon.prewarm("w.safetensors")
        rows = {k: [] for k in ("cat", "read_into", "memcpy", "disk_cache", "store", "resident")}
        for v in ALLOCATE.values():
            v.clear()
        resident = f"{PY} -c '{RESIDENT_COPY}' {REPO}/python {daemon.sock} w w.safetensors {os.path.getsize(src_file)}"
        sh(f"cat {src_file} > /dev/null")  # the page cache warm for the baselines
        for i in range(RUNS):
            variants = [
                ("cat", lambda: timed(f"cat {src_file} > /dev/null")[0]),
                ("read_into", lambda: float(sh(f"{PY} -c '{READ_INTO}' {src_file}"))),
                ("memcpy", lambda: float(sh(f"{PY} -c '{MEMCPY}' {src_file}"))),
                ("disk_cache", lambda: load_seconds(store, "w.safetensors", cache)),
                ("store", lambda: load_seconds(store, "w.safetensors")),
                ("resident", lambda: float(sh(resident).split()[0])),
            ]
            k = i % len(variants)
            for name, run in variants[k:] + variants[:k]:
                rows[name].append(run())
        resident_sums = sh(f"{resident} check")
        theirs = sh(f"{PY} {REPO}/python/tests/checksums.py {src_file}")
        resident_ok = sorted(resident_sums.splitlines()[1:]) == sorted(theirs.splitlines())
    finally:
        daemon.stop()
    verified = checksums_ok(store, "w.safetensors", src_file, cache) and resident_ok
    allocate = {k: med(v) for k, v in ALLOCATE.items()}
    return label, os.path.getsize(src_file), rows, verified, allocate


def markdown(results):
    lines = ["## Weights to host memory (no GPU on this machine)", "",
             f"`RUNS={RUNS} THAW_BENCH_ONLY=weights scripts/bench.sh`: each variant puts every tensor in a "
             "distinct destination buffer in host memory; page cache warm for all (a warm node). `cat FILE > "
             "/dev/null` (its wall time, shell and process start included: about 2 ms) and a plain read into one buffer "
             "(Python `readinto`) are the baselines; `memcpy` is "
             "one copy of the file's length between two buffers already in memory, the ceiling of any copy "
             "into a distinct buffer on this machine. thaw from a filled disk cache (each chunk read and its "
             "checksum checked) and from the store (packs in the page cache: every chunk decompressed and "
             "verified with BLAKE3) is `thaw weights load --device host`, its own `seconds` less its "
             "`allocate_seconds`. Resident: a Python client asks the daemon's weights socket, maps the memfd "
             "it receives and copies every tensor into its own buffer (the whole request, in the client). "
             "Every destination is allocated and its pages touched before the clock starts (on a GPU it "
             "would be device memory allocated beforehand; on this VM first-touch faults of fresh memory "
             "cost 0.2-2 s per GiB, varying from run to run); thaw's own allocation is shown apart. Medians "
             "of the runs, variants in turns. Afterwards the checksums of each destination were compared "
             "with BLAKE3 of the file's tensors computed in Python.", "",
             "| file | bytes | cat s | read into memory s | memcpy s | thaw, disk cache s | thaw, store s "
             "| resident copy s | thaw allocate s | disk cache / cat | resident / cat | checksums |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, size, rows, ok, allocate in results:
        m = {k: med(v) for k, v in rows.items()}
        lines.append(
            f"| {label} | {size} | {m['cat']:.3f} | {m['read_into']:.3f} | {m['memcpy']:.3f} | "
            f"{m['disk_cache']:.3f} | {m['store']:.3f} | {m['resident']:.3f} | "
            f"{allocate['disk_cache']:.3f} | {m['cat'] / m['disk_cache']:.2f}x | "
            f"{m['cat'] / m['resident']:.2f}x | {'match' if ok else 'DIFFER'} |")
    lines += ["", "Ratios are speed against `cat` (cat's time over thaw's): above 1 is faster than `cat`. "
              "Every run: " + "; ".join(
                  f"{label}: " + ", ".join(f"{k} " + " ".join(f"{x:.3f}" for x in v) for k, v in rows.items())
                  for label, _, rows, _, _ in results), ""]
    return "\n".join(lines)


def main():
    files = []
    real = subprocess.run([f"{REPO}/scripts/weights.sh"], capture_output=True, text=True,
                          env={**os.environ, "THAW_PYTHON": PY})
    if real.returncode == 0 and os.path.exists(real.stdout.strip()):
        files.append(("all-MiniLM-L6-v2 (real weights, F32)", real.stdout.strip()))
    synth = f"{WORK}/weights-src/realistic-bf16-{GIB}g.safetensors"
    realistic_bf16(synth, GIB)
    files.append((f"{GIB} GiB of bf16 weights, normal values", synth))
    results = [bench_file(label, path) for label, path in files]
    text = markdown(results)
    with open(OUT_MD, "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
