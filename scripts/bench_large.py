"""Issue 16's large images: generated trees of 2,000, 20,000 and 200,000 files (about
50 KB each, so 0.1, 1 and 10 GB; half random bytes, half hex text, every byte unique) are
built, mounted and walked, and the `thaw mount` process's resident memory is sampled
after the mount, after a full `find` walk that stats every entry, and after reading the
same 2,000 files (about 100 MB) from each. The mount runs without a disk cache and with
its default 512 MiB memory cache, so reads stay in memory. Memory per file is the slope
between the smallest and the largest image. Needs about 25 GB under THAW_BENCH_DIR; the
trees are kept there for the next run."""

import os
import random
import subprocess
import time

import bench_mount
from bench_common import RUNS, THAW, WORK, drop_caches, fresh, med, rss, sh

SIZES = [(2_000, 100 * 10**6), (20_000, 10**9), (200_000, 10**10)]
FILES_PER_DIR = 1_000
READ_FILES = 2_000
MIB = 1 << 20


def generate(root, files, total):
    """The tree, made once (a marker says it is complete): FILES_PER_DIR files per
    directory, sizes uniform around total/files, deterministic sizes, unique contents."""
    marker = f"{root}.complete"
    if os.path.exists(marker):
        return
    fresh(root)
    rng = random.Random(files)
    mean = total // files
    for i in range(files):
        d = f"{root}/d{i // FILES_PER_DIR:04}"
        if i % FILES_PER_DIR == 0:
            os.makedirs(d)
        size = rng.randint(1, 2 * mean - 1)
        data = os.urandom(size) if i % 2 else os.urandom((size + 1) // 2).hex().encode()[:size]
        with open(f"{d}/f{i:06}", "wb") as f:
            f.write(data)
    open(marker, "w").close()


def timed_peak(cmd):
    """Runs cmd; (seconds, peak resident bytes of the process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return took, usage.ru_maxrss * 1024


def build(files, total):
    """The image in its own store (kept with the tree); (store, build s, build peak RSS,
    manifest bytes in the store, stored bytes)."""
    tree, store = f"{WORK}/large-{files}", f"{WORK}/large-{files}-store"
    generate(tree, files, total)
    fresh(store)
    drop_caches()
    took, peak = timed_peak([THAW, "--store", store, "build", tree, "--tag", "large"])
    manifest = sum(os.path.getsize(f"{store}/images/{n}") for n in os.listdir(f"{store}/images"))
    stored = int(sh(f"du -sb {store}").split()[0])
    return store, took, peak, manifest, stored


def walk_and_read(store):
    """One mount: (RSS after mount, after the walk, after the reads, walk s, entries)."""
    drop_caches()
    m = bench_mount.Mount(store, "large", f"{WORK}/large-mnt")
    try:
        after_mount = rss(m.proc.pid)
        t0 = time.perf_counter()
        entries = int(sh(f"find {m.mountpoint} -printf '%s %i\\n' | wc -l"))
        walk_s = time.perf_counter() - t0
        after_walk = rss(m.proc.pid)
        sh(f"find {m.mountpoint}/d0000 {m.mountpoint}/d0001 -type f -exec cat {{}} + > /dev/null")
        after_read = rss(m.proc.pid)
    finally:
        m.stop()
    return after_mount, after_walk, after_read, walk_s, entries


def measure():
    """Every size's figures: a list of dicts, mount figures the medians of RUNS mounts."""
    out = []
    for files, total in SIZES:
        store, build_s, build_peak, manifest, stored = build(files, total)
        mounts = [walk_and_read(store) for _ in range(RUNS)]
        out.append(dict(files=files, total=total, build_s=build_s, build_peak=build_peak, manifest=manifest,
                        stored=stored, after_mount=med([m[0] for m in mounts]),
                        after_walk=med([m[1] for m in mounts]), after_read=med([m[2] for m in mounts]),
                        walk_s=med([m[3] for m in mounts]), entries=mounts[0][4]))
        print(out[-1], flush=True)
    return out


def markdown(rows):
    """The table and the per-file slopes."""
    lines = ["| files | image | stored | manifest | build s | build peak RSS | walk s | RSS after mount "
             "| after `find` walk | after reading 2,000 files |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['files']:,} | {r['total'] / 1e9:.1f} GB | {r['stored'] / 1e9:.2f} GB | "
                     f"{r['manifest'] / 1e6:.1f} MB | {r['build_s']:.0f} | {r['build_peak'] / MIB:.0f} MiB | "
                     f"{r['walk_s']:.1f} | {r['after_mount'] / MIB:.1f} MiB | {r['after_walk'] / MIB:.1f} MiB | "
                     f"{r['after_read'] / MIB:.1f} MiB |")
    small, large = rows[0], rows[-1]
    files = large["files"] - small["files"]

    def per_file(key):
        return (large[key] - small[key]) / files

    lines += ["", f"Per file, from {small['files']:,} to {large['files']:,} files: the mounted manifest "
              f"{per_file('after_mount'):.0f} B of resident memory (its stored, compressed form "
              f"{per_file('manifest'):.0f} B); after the walk {per_file('after_walk'):.0f} B; after the reads "
              f"{per_file('after_read'):.0f} B. The walk itself added "
              f"{(large['after_walk'] - large['after_mount']) / MIB:.1f} MiB to the largest mount, and reading "
              f"{READ_FILES:,} files (about {READ_FILES * large['total'] / large['files'] / 1e6:.0f} MB) "
              f"{(large['after_read'] - large['after_walk']) / MIB:.1f} MiB."]
    return "\n".join(lines)
