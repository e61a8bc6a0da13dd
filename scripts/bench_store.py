"""Issue 2 benchmarks: build throughput, dedup, read throughput of the chunk store."""

import os

from bench_common import (RUNS, THAW, BENCH, ROOTFS, ROOTFS_PLUS, WORK, sh, fields, timed, drop_caches, fresh, med)

def build_throughput():
    """thaw build vs tar -c | zstd -3 -T0 on the same tree, page cache warm. The local
    store writes its packs to the disk: the second baseline writes its archive there too."""
    store = f"{WORK}/build-store"
    archive = f"{WORK}/build-baseline.tar.zst"
    to_file = "tar -c | zstd -3 -T0 > file (same disk as the store)"
    rows = {"thaw build (local store)": [], "thaw build (memory:// store)": [], "tar -c | zstd -3 -T0 > /dev/null": [],
            to_file: []}
    bytes_read = None
    # Warm the page cache. Through a pipe: GNU tar writing to /dev/null reads no file.
    sh(f"tar -C {ROOTFS} -cf - . | cat > /dev/null")
    for _ in range(RUNS):
        fresh(store)
        t, out = timed(f"{THAW} --store {store} build {ROOTFS}")
        bytes_read = int(fields(out)["bytes_read"])
        rows["thaw build (local store)"].append(t)
        t, _ = timed(f"{THAW} --store memory:// build {ROOTFS}")
        rows["thaw build (memory:// store)"].append(t)
        t, _ = timed(f"tar -C {ROOTFS} -cf - . | zstd -3 -T0 -q > /dev/null")
        rows["tar -c | zstd -3 -T0 > /dev/null"].append(t)
        sh(f"rm -f {archive}")
        t, _ = timed(f"tar -C {ROOTFS} -cf - . | zstd -3 -T0 -q > {archive}")
        rows[to_file].append(t)
    sh(f"rm -f {archive}")
    base = med(rows["tar -c | zstd -3 -T0 > /dev/null"])
    base_file = med(rows[to_file])
    table = []
    for name, ts in rows.items():
        m = med(ts)
        table.append((name, m, bytes_read / m / 1e6, base / m, base_file / m))
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
