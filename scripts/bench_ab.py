"""A/B benchmark of two thaw binaries, side by side in one run: for ROUNDS rounds, each
figure is measured with binary A and then binary B (the order alternating by round), and
medians are compared. What a restructuring must not slow down: the build, the lazy mount's
cold start (unthrottled and over a throttled store), the warm sequential read, and the
daemon's prewarm through its API.

Usage (as root; scripts/bench_ab.sh builds B and sets the environment):
    THAW_A=/path/old THAW_B=/path/new ROUNDS=5 python3 scripts/bench_ab.py
Writes a Markdown table to stdout and the per-run figures to $THAW_BENCH_DIR/ab.json.
"""

import json
import os
import statistics
import time

import bench_daemon
import bench_mount
from bench_common import ROOTFS, WORK, sh, drop_caches, fresh

A, B = os.environ["THAW_A"], os.environ["THAW_B"]
ROUNDS = int(os.environ.get("ROUNDS", "5"))
WORKLOAD = bench_mount.WORKLOAD


def use(binary):
    """Makes the mount and daemon helpers run `binary`."""
    bench_mount.THAW = binary
    bench_daemon.THAW = binary


def build(binary):
    store = f"{WORK}/ab-build-store"
    fresh(store)
    drop_caches()
    t0 = time.perf_counter()
    sh(f"{binary} --store {store} build {ROOTFS} --tag base")
    return time.perf_counter() - t0


def cold_start(binary, store, global_args):
    use(binary)
    mp = f"{WORK}/ab-mnt"
    drop_caches()
    t0 = time.perf_counter()
    m = bench_mount.Mount(store, "base", mp, global_args, ["--prefetch", "none"])
    bench_mount.chroot_workload(m.mountpoint)
    took = time.perf_counter() - t0
    m.stop()
    return took


def daemon_prewarm(binary, store):
    """Seconds for `thaw serve` (throttled store, fresh disk cache) to prewarm the whole
    rootfs image through its API: the daemon's read path end to end."""
    use(binary)
    cache = f"{WORK}/ab-daemon-cache"
    fresh(cache)
    d = bench_daemon.Daemon(store, cache, ["--throttle", bench_mount.THROTTLE])
    try:
        t0 = time.perf_counter()
        job = d.call("POST", "/v1/prewarm", {"image": "base", "scope": "all"})
        done = d.wait_job(job["id"])
        took = time.perf_counter() - t0
    finally:
        d.stop()
    assert done["state"] == "done", done
    return took


def warm_read(binary, store, cache, size):
    """Seconds to read the 2 GiB file through a mount whose disk cache holds it, page
    cache dropped; returns GB/s."""
    use(binary)
    mp = f"{WORK}/ab-big-mnt"
    m = bench_mount.Mount(store, "big", mp, (), ["--cache", cache])
    drop_caches()
    t0 = time.perf_counter()
    sh(f"cat {m.mountpoint}/big.bin > /dev/null")
    took = time.perf_counter() - t0
    m.stop()
    return size / took / 1e9


def prepare():
    """The rootfs store and the 2 GiB file's store and disk cache, made once with A."""
    store = f"{WORK}/ab-store"
    fresh(store)
    sh(f"{A} --store {store} build {ROOTFS} --tag base")
    src = f"{WORK}/bigfile-src"
    if not os.path.exists(f"{src}/big.bin"):
        os.makedirs(src, exist_ok=True)
        sh(f"head -c {2 << 30} /dev/urandom > {src}/big.bin.tmp && mv {src}/big.bin.tmp {src}/big.bin")
    big, cache = f"{WORK}/ab-big-store", f"{WORK}/ab-big-cache"
    fresh(big)
    fresh(cache)
    sh(f"{A} --store {big} build {src} --tag big")
    use(A)
    m = bench_mount.Mount(big, "big", f"{WORK}/ab-big-mnt", (), ["--cache", cache])
    sh(f"cat {m.mountpoint}/big.bin > /dev/null")  # fills the disk cache
    m.stop()
    return store, big, cache, os.path.getsize(f"{src}/big.bin")


def main():
    store, big, cache, size = prepare()
    throttle = ["--throttle", bench_mount.THROTTLE]
    figures = {
        "build of the rootfs, s": lambda b: build(b),
        "cold start, unthrottled, s": lambda b: cold_start(b, store, []),
        f"cold start, throttled {bench_mount.THROTTLE}, s": lambda b: cold_start(b, store, throttle),
        "warm sequential read of 2 GiB, GB/s": lambda b: warm_read(b, big, cache, size),
        f"daemon: prewarm of the whole rootfs, throttled {bench_mount.THROTTLE}, s": lambda b: daemon_prewarm(b, store),
    }
    runs = {name: {"A": [], "B": []} for name in figures}
    for r in range(ROUNDS):
        order = [("A", A), ("B", B)] if r % 2 == 0 else [("B", B), ("A", A)]
        for name, measure in figures.items():
            for label, binary in order:
                runs[name][label].append(measure(binary))
        print(f"round {r + 1}/{ROUNDS} done", flush=True, file=__import__("sys").stderr)
    with open(f"{WORK}/ab.json", "w") as f:
        json.dump(runs, f, indent=1)
    print(f"| figure ({ROUNDS} rounds, order alternating) | A median | B median | B / A | A runs | B runs |")
    print("|---|---:|---:|---:|---|---|")
    for name, v in runs.items():
        a, b = statistics.median(v["A"]), statistics.median(v["B"])
        fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.3f} | {fmt(v['A'])} | {fmt(v['B'])} |")


if __name__ == "__main__":
    main()
