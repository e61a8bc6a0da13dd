#!/usr/bin/env python3
"""Benchmark driver for scripts/bench.sh: runs thaw and its baselines in the same
session, takes medians over RUNS repetitions, and writes docs/benchmarks.md."""

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

RUNS = int(os.environ.get("RUNS", "5"))
THAW = os.environ["THAW_BIN"]
BENCH = os.environ["THAW_BENCH_BIN"]
ROOTFS = os.environ["THAW_ROOTFS"]
ROOTFS_PLUS = os.environ["THAW_ROOTFS_PLUS"]
WORK = os.environ.get("THAW_BENCH_DIR", "/var/tmp/thaw-bench")
OUT = os.environ.get("THAW_BENCH_OUT", "docs/benchmarks.md")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def fields(text):
    out = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out[k.strip()] = v.split()[0] if v.split() else ""
    return out


def timed(cmd):
    start = time.perf_counter()
    out = sh(cmd)
    return time.perf_counter() - start, out


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)


def med(xs):
    return statistics.median(xs)


def build_throughput():
    """thaw build vs tar -c | zstd -3 -T0 on the same tree, page cache warm."""
    store = f"{WORK}/build-store"
    rows = {"thaw build (local store)": [], "thaw build (memory:// store)": [], "tar -c | zstd -3 -T0 > /dev/null": []}
    bytes_read = None
    sh(f"tar -C {ROOTFS} -cf - . > /dev/null")  # warm the page cache
    for _ in range(RUNS):
        fresh(store)
        t, out = timed(f"{THAW} --store {store} build {ROOTFS}")
        bytes_read = int(fields(out)["bytes_read"])
        rows["thaw build (local store)"].append(t)
        t, _ = timed(f"{THAW} --store memory:// build {ROOTFS}")
        rows["thaw build (memory:// store)"].append(t)
        t, _ = timed(f"tar -C {ROOTFS} -cf - . | zstd -3 -T0 -q > /dev/null")
        rows["tar -c | zstd -3 -T0 > /dev/null"].append(t)
    base = med(rows["tar -c | zstd -3 -T0 > /dev/null"])
    table = []
    for name, ts in rows.items():
        m = med(ts)
        table.append((name, m, bytes_read / m / 1e6, base / m))
    return bytes_read, table


def package_bytes(root, pkg):
    total = 0
    with open(f"{root}/var/lib/dpkg/info/{pkg}.list") as f:
        for line in f:
            p = root + line.strip()
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def dedup():
    store = f"{WORK}/dedup-store"
    fresh(store)
    first = fields(sh(f"{THAW} --store {store} build {ROOTFS} --tag base"))
    again = fields(sh(f"{THAW} --store {store} build {ROOTFS} --tag base-again"))
    plus = fields(sh(f"{THAW} --store {store} build {ROOTFS_PLUS} --tag plus"))
    pkg = open(f"{ROOTFS_PLUS}/.thaw-extra-package").read().strip()
    pkg_bytes = package_bytes(ROOTFS_PLUS, pkg)
    return store, first, again, plus, pkg, pkg_bytes


def read_throughput(store):
    export = f"{WORK}/export"
    cache = f"{WORK}/read-cache"
    fresh(export)
    sh(f"{THAW} --store {store} export base {export}")
    fresh(cache)
    sh(f"{BENCH} read --store {store} base --cache {cache}")  # fill the disk cache
    cat = f"find {export} -type f -print0 | xargs -0 cat > /dev/null"
    file_bytes = int(sh(f"find {export} -type f -printf '%s\\n' | awk '{{s+=$1}} END {{print s}}'").strip())
    rows = {k: [] for k in ["cold store, page cache dropped", "warm disk cache, page cache dropped",
                            "warm disk cache, page cache warm", "cat exported files, page cache dropped",
                            "cat exported files, page cache warm"]}
    chunk_bytes = None
    for _ in range(RUNS):
        drop_caches()
        t, out = timed(f"{BENCH} read --store {store} base")
        f = fields(out)
        chunk_bytes = int(f["bytes"])
        rows["cold store, page cache dropped"].append(chunk_bytes / float(f["seconds"]) / 1e9)
        drop_caches()
        f = fields(sh(f"{BENCH} read --store {store} base --cache {cache}"))
        assert int(f["fetched_chunks"]) == 0, "the disk cache should be warm"
        rows["warm disk cache, page cache dropped"].append(chunk_bytes / float(f["seconds"]) / 1e9)
        f = fields(sh(f"{BENCH} read --store {store} base --cache {cache}"))
        rows["warm disk cache, page cache warm"].append(chunk_bytes / float(f["seconds"]) / 1e9)
        drop_caches()
        t, _ = timed(cat)
        rows["cat exported files, page cache dropped"].append(file_bytes / t / 1e9)
        t, _ = timed(cat)
        rows["cat exported files, page cache warm"].append(file_bytes / t / 1e9)
    return chunk_bytes, file_bytes, {k: med(v) for k, v in rows.items()}


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo").split(":", 1)[1].strip()
    mem = sh("free -g | awk '/Mem:/ {print $2}'").strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}"


def main():
    os.makedirs(WORK, exist_ok=True)
    print("build throughput ...", file=sys.stderr)
    tree_bytes, build_rows = build_throughput()
    print("dedup ...", file=sys.stderr)
    store, first, again, plus, pkg, pkg_bytes = dedup()
    print("read throughput ...", file=sys.stderr)
    chunk_bytes, file_bytes, reads = read_throughput(store)

    lines = []
    w = lines.append
    w("# thaw benchmarks")
    w("")
    w(f"Generated by `scripts/bench.sh` on {datetime.date.today().isoformat()}; machine: {machine()}.")
    w(f"Every figure is the median of {RUNS} runs measured in the same session as its baseline.")
    w("These machines are shared and noisy: compare ratios, not absolute numbers, across runs.")
    w("")
    w("## Build throughput (issue 2)")
    w("")
    w(f"Tree: debootstrap `--variant=minbase bookworm` ({tree_bytes / 1e6:.1f} MB of file contents), page cache warm.")
    w("Throughput is file bytes read per second. Target: thaw at least 0.8× `tar | zstd -3 -T0`.")
    w("")
    w("| command | median s | MB/s | × tar+zstd |")
    w("|---|---:|---:|---:|")
    for name, m, mbps, ratio in build_rows:
        w(f"| {name} | {m:.3f} | {mbps:.1f} | {ratio:.2f} |")
    w("")
    w("Reproduce: `RUNS=5 scripts/bench.sh` (section `build_throughput` in `scripts/bench.py`).")
    w("")
    w("## Dedup (issue 2)")
    w("")
    w("| build into one store | bytes read | new chunks | new raw bytes | bytes stored |")
    w("|---|---:|---:|---:|---:|")
    for name, f in [("base rootfs", first), ("base rootfs again", again), (f"base + `{pkg}`", plus)]:
        w(f"| {name} | {f['bytes_read']} | {f['chunks_new']} | {f['raw_bytes_new']} | {f['bytes_stored']} |")
    stored_plus = int(plus["bytes_stored"])
    raw_plus = int(plus["raw_bytes_new"])
    w("")
    w(f"`{pkg}` installs {pkg_bytes} bytes of regular files. Building the tree with it installed added "
      f"{raw_plus} bytes of new chunks = {raw_plus / pkg_bytes:.3f}× the package's bytes before compression "
      f"(this includes dpkg's own database files), and stored {stored_plus} bytes = "
      f"{stored_plus / pkg_bytes:.3f}× after compression (target ≤ 1.05×). "
      f"Rebuilding the unchanged tree stored {again['bytes_stored']} bytes.")
    w("")
    w("## Read throughput (issue 2)")
    w("")
    w(f"Every unique chunk of the base image ({chunk_bytes / 1e6:.1f} MB) read once in file order through "
      "`ChunkReader` (32 MiB batches, 4 in flight; decompression and BLAKE3 verification included), next to "
      f"`cat` of the exported files ({file_bytes / 1e6:.1f} MB).")
    w("")
    w("| read | median GB/s |")
    w("|---|---:|")
    for name, v in reads.items():
        w(f"| {name} | {v:.3f} |")
    w("")
    cold = reads["cold store, page cache dropped"] / reads["cat exported files, page cache dropped"]
    warm = reads["warm disk cache, page cache warm"] / reads["cat exported files, page cache warm"]
    w(f"Ratios: cold store / cat (both cold) = {cold:.2f}; warm disk cache / cat (both warm) = {warm:.2f}.")
    w("")
    w("Reproduce: `RUNS=5 scripts/bench.sh`; one read: `target/release/thaw-bench read --store DIR base [--cache DIR]`.")
    w("")
    with open(OUT, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
