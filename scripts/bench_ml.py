"""Issue 14's machine-learning image rows: the GPU-style image (Debian with python3 and a
venv holding torch with its CUDA wheels, numpy and pandas; scripts/gpu_image.sh) cold
started lazily with `thaw mount` and read whole, next to the full pull (`thaw export`,
then the same workload) and to the same workload on a local unpacked copy (the floor),
page cache dropped before each."""

import os
import time

import bench_mount
from bench_common import RUNS, THAW, WORK, sh, drop_caches, fields, fresh, med

# A model server's start-up: import the framework (CUDA libraries load without a GPU).
START = "/usr/local/bin/start > /dev/null"
# Reads every file of the Python environment's packages, as a full import of them would
# (importing every submodule of torch takes minutes and fails on optional ones).
READ_ALL = "find /opt/venv -type f -exec cat {} + > /dev/null"


def ml_store(tree):
    """The image built once into its own store (tag `ml`), with the start-up's trace
    pushed from a mount that recorded it. Returns the store."""
    store = f"{WORK}/ml-store"
    marker = f"{store}.complete"
    if os.path.exists(marker):
        return store
    fresh(store)
    sh(f"{THAW} --store {store} build {tree} --tag ml")
    trace = f"{WORK}/ml-startup.trace"
    m = bench_mount.Mount(store, "ml", f"{WORK}/ml-trace-mnt", mount_args=["--record-trace", trace])
    bench_mount.chroot_workload(m.mountpoint, START)
    m.stop()
    sh(f"{THAW} --store {store} trace push ml {trace}")
    open(marker, "w").close()
    return store


def floor(tree, workload):
    """The workload on the local unpacked tree, page cache dropped: the floor."""
    drop_caches()
    t0 = time.perf_counter()
    bench_mount.chroot_workload(tree, workload)
    return time.perf_counter() - t0


def lazy(store, extra, mount_args, workload):
    """`thaw mount` (fresh process, page cache dropped) then the workload; (seconds,
    bytes fetched, bytes served)."""
    drop_caches()
    t0 = time.perf_counter()
    m = bench_mount.Mount(store, "ml", f"{WORK}/ml-mnt", extra, mount_args)
    bench_mount.chroot_workload(m.mountpoint, workload)
    took = time.perf_counter() - t0
    st = m.stop()
    return took, int(st["fetched_bytes"]), int(st["bytes_served"])


def rows(tree):
    """Every row: {label: (lazy s, full pull s, floor s, fetched, served)}."""
    store = ml_store(tree)
    throttle = ["--throttle", bench_mount.THROTTLE]
    where = f"throttled {bench_mount.THROTTLE.replace(',', ' ms, ')} Mbit/s"
    cache = f"{WORK}/ml-cache"
    configs = [
        ("start-up, local store, no trace", [], ["--prefetch", "none"], START),
        ("start-up, local store, trace pushed", [], [], START),
        (f"start-up, {where}, no trace", throttle, ["--prefetch", "none"], START),
        (f"start-up, {where}, trace pushed", throttle, [], START),
        ("read every file of /opt/venv, local store read in place (default)", [], ["--prefetch", "none", "--cache", cache], READ_ALL),
        ("read every file of /opt/venv, local store copied into the disk cache (`--copy-local-store --cache-size 20G`: bulk fetch on)",
         [], ["--prefetch", "none", "--cache", cache, "--copy-local-store", "--cache-size", str(20 << 30)], READ_ALL),
    ]
    out = {}
    for label, extra, mount_args, workload in configs:
        runs = {"lazy": [], "full": [], "floor": [], "fetched": [], "served": []}
        for _ in range(RUNS):
            fresh(cache)
            took, fetched, served = lazy(store, extra, mount_args, workload)
            runs["lazy"].append(took)
            runs["fetched"].append(fetched)
            runs["served"].append(served)
            runs["full"].append(bench_mount.full_pull(store, extra, "ml", f"{WORK}/ml-export", workload))
            runs["floor"].append(floor(f"{WORK}/ml-export", workload))
        out[label] = tuple(med(runs[k]) for k in ("lazy", "full", "floor", "fetched", "served"))
    return out


def markdown(tree):
    """The rows as a Markdown table, with the image's size."""
    table = rows(tree)
    size = int(fields(sh(f"{THAW} --store {WORK}/ml-store inspect ml"))["file_bytes"])
    lines = [
        f"Image: {size / 1e9:.2f} GB of files. Medians of {RUNS} runs; page cache dropped before each.",
        "",
        "| workload | lazy s | full pull s | local floor s | lazy / full | lazy / floor | bytes fetched | bytes served |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (lz, full, fl, fetched, served) in table.items():
        lines.append(f"| {label} | {lz:.3f} | {full:.3f} | {fl:.3f} | {lz / full:.2f} | {lz / fl:.2f} | {fetched:.0f} | {served:.0f} |")
    return "\n".join(lines)
