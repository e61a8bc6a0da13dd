#!/usr/bin/env python3
"""Benchmark driver for scripts/bench.sh: runs thaw and its baselines in the same
session, takes medians over RUNS repetitions, and writes docs/benchmarks.md."""

import datetime
import json
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


def cell(text):
    """A Markdown table cell: pipes inside it must be escaped."""
    return text.replace("|", "\\|")


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


# ---- issue 3: the lazy FUSE mount -------------------------------------------------

WORKLOAD = "apt-get --version >/dev/null && dpkg -l >/dev/null"
THROTTLE = os.environ.get("THAW_BENCH_THROTTLE", "20,1000")


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


class Mount:
    """A `thaw mount` process, started cold (fresh process, empty memory cache)."""

    def __init__(self, store, image, mountpoint, global_args=(), mount_args=()):
        os.makedirs(mountpoint, exist_ok=True)
        self.mountpoint = os.path.realpath(mountpoint)
        self.status = f"{self.mountpoint}.status"
        self.proc = subprocess.Popen([THAW, "--store", store, *global_args, "mount", image, self.mountpoint,
                                      "--status-file", self.status, *mount_args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mount failed: " + self.proc.stderr.read().decode())
            time.sleep(0.002)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        return fields(open(self.status).read())


def chroot_workload(root):
    sh(f"unshare -m sh -c 'mount --bind /dev {root}/dev && mount -t proc proc {root}/proc && "
       f"chroot {root} /bin/bash -c \"{WORKLOAD}\"'")


def payload_image(store):
    """The rootfs plus 1 GiB of incompressible data the workload never reads: GPU images
    are gigabytes, of which start-up reads a few percent."""
    tree = f"{WORK}/rootfs-payload"
    if not os.path.exists(f"{tree}/.bench-complete"):
        shutil.rmtree(tree, ignore_errors=True)
        sh(f"cp -a {ROOTFS} {tree} && head -c {1 << 30} /dev/urandom > {tree}/opt/payload.bin && touch {tree}/.bench-complete")
    sh(f"{THAW} --store {store} build {tree} --tag payload")


def image_bytes(store, image):
    return int(fields(sh(f"{THAW} --store {store} inspect {image}"))["file_bytes"])


def cold_start(store):
    """Time from `thaw mount` to the end of a start-up workload, against a full pull."""
    results = {}
    payload_image(store)
    throttled = f"throttled {THROTTLE.replace(',', ' ms, ')} Mbit/s"
    ordered, _, _ = trace_stores()
    configs = [
        (f"{throttled}, fetch-around 512 KiB (default)", store, "base", ["--throttle", THROTTLE], []),
        (f"{throttled}, fetch-around off", store, "base", ["--throttle", THROTTLE], ["--fetch-around", "0"]),
        ("unthrottled, fetch-around 512 KiB (default)", store, "base", [], []),
        (f"{throttled}, fetch-around 512 KiB, image + 1 GiB not read at start-up", store, "payload", ["--throttle", THROTTLE], []),
        (f"{throttled}, packs in trace order (`build --order-by`), no prefetch", ordered, "base", ["--throttle", THROTTLE], ["--prefetch", "none"]),
        (f"{throttled}, packs in trace order, trace pushed: `thaw mount` prefetches it", ordered, "base", ["--throttle", THROTTLE], []),
    ]
    for label, st, image, extra, mount_args in configs:
        lazy, full, fetched, served = [], [], [], []
        for _ in range(RUNS):
            mp = f"{WORK}/coldstart-mnt"
            drop_caches()
            t0 = time.perf_counter()
            m = Mount(st, image, mp, extra, mount_args)
            chroot_workload(m.mountpoint)
            lazy.append(time.perf_counter() - t0)
            st_ = m.stop()
            fetched.append(int(st_["fetched_bytes"]))
            served.append(int(st_["bytes_served"]))
            out = f"{WORK}/coldstart-export"
            fresh(out)
            drop_caches()
            t0 = time.perf_counter()
            sh(f"{THAW} --store {st} {' '.join(extra)} export {image} {out}")
            chroot_workload(out)
            full.append(time.perf_counter() - t0)
        results[label] = (med(lazy), med(full), med(fetched), med(served), image_bytes(st, image))
    return results


def warm_sequential():
    """A 2 GiB file read through the mount from a warm disk cache, page cache dropped,
    next to `cat` of the same file exported to the local disk."""
    src = f"{WORK}/bigfile-src"
    if not os.path.exists(f"{src}/big.bin"):
        os.makedirs(src, exist_ok=True)
        sh(f"head -c {2 << 30} /dev/urandom > {src}/big.bin.tmp && mv {src}/big.bin.tmp {src}/big.bin")
    store, cache, out, mp = f"{WORK}/big-store", f"{WORK}/big-cache", f"{WORK}/big-export", f"{WORK}/big-mnt"
    for d in (store, cache, out):
        fresh(d)
    sh(f"{THAW} --store {store} build {src} --tag big")
    sh(f"{THAW} --store {store} export big {out}")
    m = Mount(store, "big", mp, mount_args=["--cache", cache])
    sh(f"cat {m.mountpoint}/big.bin > /dev/null")  # fills the disk cache
    m.stop()
    size = os.path.getsize(f"{out}/big.bin")
    thaw_runs, cat_runs = [], []
    for _ in range(RUNS):
        m = Mount(store, "big", mp, mount_args=["--cache", cache])
        drop_caches()
        t, _ = timed(f"cat {m.mountpoint}/big.bin > /dev/null")
        st = m.stop()
        assert int(st["fetched_chunks"]) == 0, "the disk cache should serve everything"
        thaw_runs.append(size / t / 1e9)
        drop_caches()
        t, _ = timed(f"cat {out}/big.bin > /dev/null")
        cat_runs.append(size / t / 1e9)
    return size, med(thaw_runs), med(cat_runs)


def metadata_walk(store):
    """`find | wc -l` and `ls -lR` on a freshly mounted rootfs vs the exported tree, cold."""
    out = f"{WORK}/export"
    mp = f"{WORK}/walk-mnt"
    commands = {"find | wc -l": "find {} | wc -l", "ls -lR": "ls -lR {} > /dev/null"}
    times = {name: ([], []) for name in commands}
    for _ in range(RUNS):
        m = Mount(store, "base", mp)
        drop_caches()
        for name, cmd in commands.items():
            times[name][0].append(timed(cmd.format(m.mountpoint))[0])
        m.stop()
        drop_caches()
        for name, cmd in commands.items():
            times[name][1].append(timed(cmd.format(out))[0])
    return {k: (med(a), med(b)) for k, (a, b) in times.items()}

# ---- issue 4: the node daemon, prefetch and prewarm ----------------------------------

import threading
import urllib.request


class Daemon:
    """A `thaw serve` on loopback with a fresh (or given) disk cache."""

    def __init__(self, store, cache, global_args=(), serve_args=()):
        self.state = f"{WORK}/serve-state"
        ready = f"{WORK}/serve-ready"
        if os.path.exists(ready):
            os.remove(ready)
        self.proc = subprocess.Popen([THAW, "--store", store, *global_args, "serve", "--listen", "127.0.0.1:0",
                                      "--cache", cache, "--state-dir", self.state, "--ready-file", ready, *serve_args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("thaw serve failed: " + self.proc.stderr.read().decode())
            time.sleep(0.005)
        self.url = "http://" + open(ready).read().strip()

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def wait_job(self, job_id):
        while True:
            j = self.call("GET", f"/v1/jobs/{job_id}")
            if j["state"] != "running":
                return j
            time.sleep(0.01)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def record_trace(store, image):
    """Records the workload's start-up trace on an unthrottled mount."""
    trace = f"{WORK}/startup.trace"
    m = Mount(store, image, f"{WORK}/trace-mnt", mount_args=["--record-trace", trace])
    chroot_workload(m.mountpoint)
    m.stop()
    return trace


def trace_stores():
    """Two stores of the base rootfs with the workload's start-up trace pushed: one built
    in path order, one with `--order-by` the trace. Returns (ordered, path-order, (image, records))."""
    base_store = f"{WORK}/prefetch-base-store"
    store = f"{WORK}/prefetch-ordered-store"
    marker = f"{WORK}/prefetch-stores.json"
    if os.path.exists(marker):
        return store, base_store, tuple(json.load(open(marker)))
    for d in (base_store, store):
        fresh(d)
    image = fields(sh(f"{THAW} --store {base_store} build {ROOTFS} --tag base"))["image"]
    trace = record_trace(base_store, "base")
    records = len(open(trace).read().splitlines()) - 2
    # The same rootfs built with its start-up working set packed in first-access order.
    ordered = fields(sh(f"{THAW} --store {store} build {ROOTFS} --tag base --order-by {trace}"))
    assert ordered["image"] == image, "the layout must not change the image"
    for st in (base_store, store):
        sh(f"{THAW} --store {st} trace push base {trace}")
    json.dump([image, records], open(marker, "w"))
    return store, base_store, (image, records)


def prefetch_cold_start():
    """The cold start of issue 3 through the daemon: no prefetch, trace prewarm issued with
    the start, and a node prewarmed in advance, next to the full pull and a local run."""
    store, base_store, (image, records) = trace_stores()
    export = f"{WORK}/prefetch-export"
    fresh(export)
    sh(f"{THAW} --store {store} export base {export}")
    throttle = ["--throttle", THROTTLE]
    cache = f"{WORK}/serve-cache"
    mp = f"{WORK}/prefetch-mnt"
    os.makedirs(mp, exist_ok=True)
    mp = os.path.realpath(mp)

    def daemon_start(st, prewarm=None, in_advance=False, mount_prefetch="none"):
        fresh(cache)
        d = Daemon(st, cache, throttle)
        try:
            if in_advance:
                j = d.call("POST", "/v1/prewarm", {"image": image, "scope": "all"})
                assert d.wait_job(j["id"])["state"] == "done"
            drop_caches()
            t0 = time.perf_counter()
            threads = []
            if prewarm:
                # The autoscaler asks for the prewarm as the runtime asks for the mount.
                t = threading.Thread(target=lambda: d.call("POST", "/v1/prewarm", {"image": image, "scope": prewarm}))
                t.start()
                threads.append(t)
            m = d.call("POST", "/v1/mounts", {"image": image, "mountpoint": mp, "prefetch": mount_prefetch})
            chroot_workload(mp)
            took = time.perf_counter() - t0
            for t in threads:
                t.join()
            cache_state = d.call("GET", "/v1/cache")
            d.call("DELETE", f"/v1/mounts/{m['id']}")
            return took, cache_state["store"]["fetched_bytes"]
        finally:
            d.stop()

    rows = {
        "full pull (`thaw export`, then the workload)": [],
        "lazy, no prefetch, packs in path order": [],
        "lazy, no prefetch": [],
        "lazy + trace prewarm issued with the start": [],
        "lazy, the mount starts the trace prewarm itself (default)": [],
        "lazy, node prewarmed in advance (scope all)": [],
        "local export, page cache dropped (no thaw)": [],
    }
    fetched = {k: [] for k in rows}
    for _ in range(RUNS):
        out = f"{WORK}/prefetch-full"
        fresh(out)
        drop_caches()
        t0 = time.perf_counter()
        sh(f"{THAW} --store {store} {' '.join(throttle)} export {image} {out}")
        chroot_workload(out)
        rows["full pull (`thaw export`, then the workload)"].append(time.perf_counter() - t0)
        for label, st, kw in [("lazy, no prefetch, packs in path order", base_store, {}),
                              ("lazy, no prefetch", store, {}),
                              ("lazy + trace prewarm issued with the start", store, {"prewarm": "trace"}),
                              ("lazy, the mount starts the trace prewarm itself (default)", store, {"mount_prefetch": "trace"}),
                              ("lazy, node prewarmed in advance (scope all)", store, {"in_advance": True})]:
            took, fb = daemon_start(st, **kw)
            rows[label].append(took)
            fetched[label].append(fb)
        drop_caches()
        t0 = time.perf_counter()
        chroot_workload(export)
        rows["local export, page cache dropped (no thaw)"].append(time.perf_counter() - t0)
    return {k: (med(v), med(fetched[k]) if fetched[k] else None) for k, v in rows.items()}, records


def wrk_load():
    """`wrk` against the daemon's GET /v1/cache on loopback: requests per second, errors."""
    if shutil.which("wrk") is None:
        return None
    store = f"{WORK}/prefetch-ordered-store"
    cache = f"{WORK}/serve-cache"
    d = Daemon(store, cache)
    try:
        rss0 = int(sh(f"awk '/VmRSS/ {{print $2}}' /proc/{d.proc.pid}/status"))
        out = sh(f"wrk -t2 -c100 -d10s {d.url}/v1/cache")
        rss1 = int(sh(f"awk '/VmRSS/ {{print $2}}' /proc/{d.proc.pid}/status"))
    finally:
        d.stop()
    rps = float(out.split("Requests/sec:")[1].split()[0])
    total = int(out.split(" requests in ")[0].split()[-1])
    errors = sum(int(x) for x in __import__("re").findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(out.split("Non-2xx or 3xx responses:")[1].split()[0]) if "Non-2xx" in out else 0
    return {"requests": total, "rps": rps, "socket_errors": errors, "non_2xx": non2xx, "rss_kb": (rss0, rss1)}


def plot_cold_start(cold):
    """Bars of lazy start vs full pull per configuration; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [k.replace(", ", "\n", 2) for k in cold]
    lazy = [v[0] for v in cold.values()]
    full = [v[1] for v in cold.values()]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], lazy, 0.4, label="thaw mount (lazy)")
    ax.bar([x + 0.2 for x in xs], full, 0.4, label="full pull (thaw export)")
    for x, (l, f) in enumerate(zip(lazy, full)):
        ax.text(x, max(l, f) * 1.02, f"{l / f:.2f}x", ha="center", fontsize=9)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("seconds to end of start-up workload (median)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Cold start: Debian rootfs, apt-get --version && dpkg -l in a chroot")
    fig.tight_layout()
    path = os.path.join(os.path.dirname(OUT), "cold-start.png")
    fig.savefig(path, dpi=110)
    return path


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo").split(":", 1)[1].strip()
    mem = sh("free -g | awk '/Mem:/ {print $2}'").strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}"


def main():
    os.makedirs(WORK, exist_ok=True)
    # Stores made by an earlier version of thaw are not reused.
    if os.path.exists(f"{WORK}/prefetch-stores.json"):
        os.remove(f"{WORK}/prefetch-stores.json")
    if os.environ.get("THAW_BENCH_ONLY") == "prefetch":
        print(json.dumps(prefetch_cold_start(), indent=1))
        print(json.dumps(wrk_load(), indent=1))
        return
    print("build throughput ...", file=sys.stderr)
    tree_bytes, build_rows = build_throughput()
    print("dedup ...", file=sys.stderr)
    store, first, again, plus, pkg, pkg_bytes = dedup()
    print("read throughput ...", file=sys.stderr)
    chunk_bytes, file_bytes, reads = read_throughput(store)
    print("lazy mount cold start ...", file=sys.stderr)
    cold = cold_start(store)
    print("warm sequential read ...", file=sys.stderr)
    big_size, big_thaw, big_cat = warm_sequential()
    print("metadata walk ...", file=sys.stderr)
    walk = metadata_walk(store)
    print("prefetch cold start ...", file=sys.stderr)
    prefetch, trace_records = prefetch_cold_start()
    print("wrk load ...", file=sys.stderr)
    load = wrk_load()

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
        w(f"| {cell(name)} | {m:.3f} | {mbps:.1f} | {ratio:.2f} |")
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
    cold_ratio = reads["cold store, page cache dropped"] / reads["cat exported files, page cache dropped"]
    warm_ratio = reads["warm disk cache, page cache warm"] / reads["cat exported files, page cache warm"]
    w(f"Ratios: cold store / cat (both cold) = {cold_ratio:.2f}; warm disk cache / cat (both warm) = {warm_ratio:.2f}.")
    w("")
    w("Reproduce: `RUNS=5 scripts/bench.sh`; one read: `target/release/thaw-bench read --store DIR base [--cache DIR]`.")
    w("")
    w("## Lazy mount: cold start (issue 3)")
    w("")
    w("Time from starting `thaw mount` (fresh process, no disk cache, page cache dropped) to the end of "
      f"`{WORKLOAD}` in a chroot of the Debian rootfs (the runtime way: `unshare -m`, host `/dev` bound, `/proc` mounted), "
      "against the full pull on the same store: `thaw export` of the whole image, then the same workload. "
      "`--throttle MS,MBIT` models a remote object store (per-request latency and a shared bandwidth limit). "
      "Targets: lazy at most 0.3× the full pull; bytes fetched at most 3× the bytes read.")
    w("")
    w("| store | lazy s | full pull s | lazy / full | bytes read (served) | bytes fetched | fetched / read | fraction of image read |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, (lazy, full, fetched, served, size) in cold.items():
        w(f"| {label} | {lazy:.3f} | {full:.3f} | {lazy / full:.2f} | {served:.0f} | {fetched:.0f} | "
          f"{fetched / served:.2f} | {served / size:.3f} |")
    w("")
    w("Without a trace, what is left of the lazy time under the throttle is the chain of dependent first reads "
      "(exec, dynamic loader, libraries, dpkg's database: about 30 requests of 20 ms each) plus the mount's own "
      "start (listing packs, loading the indexes and the manifest). Fetch-around removes about half of those requests. "
      "Packing the start-up working set in first-access order (`thaw build --order-by TRACE`) makes fetch-around "
      "bring the next chunks the start-up needs. With the image's start-up trace pushed (`thaw trace push`; here the "
      "workload's own trace, recorded once with `thaw mount --record-trace`), `thaw mount` prefetches it in the "
      "background from the first moment, at prefetch priority; reads still fetch on demand and promote a prefetch "
      "they wait for. The 1 GiB row is the same rootfs with 1 GiB more that start-up never reads, as in GPU images: "
      "the full pull grows with the image, the lazy start does not.")
    w("")
    w("Reproduce: `RUNS=5 scripts/bench.sh` (`cold_start` in `scripts/bench.py`); by hand: "
      "`thaw --throttle 20,1000 mount base MNT` and the chroot command above.")
    w("")
    w("## Lazy mount: warm sequential read (issue 3)")
    w("")
    w(f"A {big_size / 2**30:.0f} GiB incompressible file read with `cat` through a fresh mount whose disk cache is warm "
      "(page cache dropped; every chunk re-hashed on read), next to `cat` of the exported file (page cache dropped). "
      "Target: at least 0.6×.")
    w("")
    w("| read | median GB/s |")
    w("|---|---:|")
    w(f"| thaw mount, warm disk cache | {big_thaw:.3f} |")
    w(f"| cat of the exported file | {big_cat:.3f} |")
    w(f"| ratio | {big_thaw / big_cat:.2f} |")
    w("")
    w("## Lazy mount: metadata walk (issue 3)")
    w("")
    w("On a fresh mount of the Debian rootfs and on its export, page and dentry caches dropped first. Target: at most 2×.")
    w("")
    w("| command | mount s | export s | mount / export |")
    w("|---|---:|---:|---:|")
    for cmd, (a, b) in walk.items():
        w(f"| `{cell(cmd)}` | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    w("")
    w("`ls -l` asks for two extended attributes of every file (`system.posix_acl_access` and "
      "`security.selinux`), and FUSE lets the kernel cache neither attributes nor their absence. This image has "
      "no extended attributes at all, so thaw answers the first `getxattr` with `ENOSYS`; the kernel then answers "
      "every later one itself (`EOPNOTSUPP`) with no round trip. Images that do have xattrs keep exact "
      "`getxattr` semantics and pay a round trip (about 24 µs here) per call.")
    w("")
    w("## Node daemon: cold start with prefetch and prewarm (issue 4)")
    w("")
    w(f"The cold start above (`{WORKLOAD}` in a chroot of the Debian rootfs, page cache dropped) through "
      f"`thaw serve`, the store throttled to {THROTTLE.replace(',', ' ms per request, ')} Mbit/s. Each lazy run starts "
      "a daemon with an empty disk cache (the daemon is a node service: its start is not timed), then times "
      "`POST /v1/mounts` plus the workload. The trace is the workload's own start-up trace "
      f"({trace_records} records, recorded with `thaw mount --record-trace` and pushed with `thaw trace push`); "
      "the store was built with `thaw build --order-by` that trace, except in the path-order row. "
      "\"Trace prewarm issued with the start\" sends `POST /v1/prewarm {scope: trace}` at the same moment as the mount. "
      "\"The mount starts the trace prewarm itself\" is `POST /v1/mounts` alone with its default `prefetch: trace`; "
      "the other rows mount with `prefetch: none`. "
      "\"Prewarmed in advance\" runs `POST /v1/prewarm {scope: all}` to completion first. "
      "The full pull and the local run are measured in the same loop. "
      "Targets: trace prewarm ≤ 0.15× the full pull and at least 30% faster than lazy without prefetch; "
      "prewarmed within 1.2× of the local run.")
    w("")
    full_t = prefetch["full pull (`thaw export`, then the workload)"][0]
    local_t = prefetch["local export, page cache dropped (no thaw)"][0]
    w("| run | median s | × full pull | × local | bytes fetched during the run |")
    w("|---|---:|---:|---:|---:|")
    for label, (t, fb) in prefetch.items():
        w(f"| {cell(label)} | {t:.3f} | {t / full_t:.2f} | {t / local_t:.2f} | {'' if fb is None else f'{fb:.0f}'} |")
    lazy_t = prefetch["lazy, no prefetch"][0]
    trace_t = prefetch["lazy + trace prewarm issued with the start"][0]
    w("")
    w(f"Trace prewarm vs lazy without prefetch: {100 * (1 - trace_t / lazy_t):.0f}% faster.")
    w("")
    w("Reproduce: `RUNS=5 scripts/bench.sh` (`prefetch_cold_start` in `scripts/bench.py`); by hand: "
      "`thaw --throttle 20,1000 serve --cache DIR`, then `thaw prewarm IMAGE` and `POST /v1/mounts`.")
    w("")
    w("## Node daemon: HTTP load (issue 4)")
    w("")
    if load:
        w(f"`wrk -t2 -c100 -d10s` against `GET /v1/cache` on loopback: {load['requests']} requests, "
          f"{load['rps']:.0f} requests/s, {load['socket_errors']} socket errors, {load['non_2xx']} non-2xx; "
          f"daemon RSS {load['rss_kb'][0]} kB before, {load['rss_kb'][1]} kB after.")
    else:
        w("`wrk` is not installed; skipped.")
    w("")
    plot = plot_cold_start(cold)
    if plot:
        w(f"![Cold start: lazy mount vs full pull]({os.path.relpath(plot, os.path.dirname(OUT))})")
        w("")
    with open(OUT + ".json", "w") as f:
        json.dump({"build": build_rows, "reads": reads, "cold_start": cold, "warm_sequential": [big_size, big_thaw, big_cat],
                   "metadata_walk": walk, "prefetch_cold_start": prefetch, "wrk": load}, f, indent=1)
    with open(OUT, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
