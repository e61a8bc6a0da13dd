"""Issue 3 benchmarks: the lazy FUSE mount's cold start, warm sequential read and
metadata walk, plus the start-up trace and trace-ordered stores the later ones share."""

import json
import os
import sys
import shutil
import subprocess
import time

from bench_common import (RUNS, THAW, ROOTFS, WORK, sh, fields, timed, drop_caches, fresh, med)

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


def chroot_workload(root, workload=WORKLOAD):
    sh(f"unshare -m sh -c 'mount --bind /dev {root}/dev && mount -t proc proc {root}/proc && "
       f"chroot {root} /bin/bash -c \"{workload}\"'")


def full_pull(store, global_args, image, out, workload=WORKLOAD):
    """The baseline a lazy start is measured against: `thaw export` of the whole image
    (page cache dropped first), then the workload in it. Returns the seconds taken."""
    fresh(out)
    drop_caches()
    t0 = time.perf_counter()
    sh(f"{THAW} --store {store} {' '.join(global_args)} export {image} {out}")
    chroot_workload(out, workload)
    return time.perf_counter() - t0


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


def fetch_around_configs(store):
    """The fetch policy (auto, the default) next to the old fixed 512 KiB and to none,
    from a throttled store and from a local one."""
    throttled = f"throttled {THROTTLE.replace(',', ' ms, ')} Mbit/s"
    rows = []
    for where, extra in ((throttled, ["--throttle", THROTTLE]), ("unthrottled", [])):
        rows += [
            (f"{where}, fetch-around auto (default)", store, "base", extra, []),
            (f"{where}, fetch-around 512 KiB (fixed)", store, "base", extra, ["--fetch-around", "512K"]),
            (f"{where}, fetch-around off", store, "base", extra, ["--fetch-around", "0"]),
        ]
    return rows


def cold_start(store, quick=False):
    """Time from `thaw mount` to the end of a start-up workload, against a full pull.
    `quick`: the fetch-around rows only (THAW_BENCH_ONLY=cold)."""
    results = {}
    throttled = f"throttled {THROTTLE.replace(',', ' ms, ')} Mbit/s"
    configs = fetch_around_configs(store)
    if not quick:
        payload_image(store)
        ordered, _, _ = trace_stores()
        configs += [
            (f"{throttled}, fetch-around auto, image + 1 GiB not read at start-up", store, "payload", ["--throttle", THROTTLE], []),
            (f"{throttled}, packs in trace order (`build --order-by`), no prefetch", ordered, "base", ["--throttle", THROTTLE], ["--prefetch", "none"]),
            (f"{throttled}, packs in trace order, trace pushed: `thaw mount` prefetches it", ordered, "base", ["--throttle", THROTTLE], []),
        ]
    for label, st, image, extra, mount_args in configs:
        lazy, full, fetched, served, chosen = [], [], [], [], []
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
            chosen.append(int(st_.get("fetch_around_bytes", 0)))
            full.append(full_pull(st, extra, image, f"{WORK}/coldstart-export"))
        results[label] = (med(lazy), med(full), med(fetched), med(served), image_bytes(st, image))
        FETCH_AROUND_CHOSEN[label] = med(chosen)
    return results


def mount_start(store):
    """Time from starting `thaw --throttle THROTTLE mount base MNT --cache DIR --prefetch
    none` to the mountpoint appearing, with the pack index copies (`DIR/meta`) removed
    first and kept from the run before, alternating. Returns {label: seconds per run}."""
    cache, mp = f"{WORK}/mstart-cache", f"{WORK}/mstart-mnt"
    fresh(cache)
    args = (["--throttle", THROTTLE], ["--cache", cache, "--prefetch", "none"])
    Mount(store, "base", mp, *args).stop()  # makes the copies
    runs = {"pack index copies removed first": [], "pack index copies kept": []}
    for i in range(RUNS):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for label in order:
            if label.endswith("removed first"):
                shutil.rmtree(f"{cache}/meta", ignore_errors=True)
            t0 = time.perf_counter()
            m = Mount(store, "base", mp, *args)
            runs[label].append(time.perf_counter() - t0)
            m.stop()
    return runs


# The fetch-around each cold-start row's mounts ended with (median), by label.
FETCH_AROUND_CHOSEN = {}

READ_EVERYTHING = "dpkg --verify"


def read_everything(store):
    """A workload that reads the whole image (`dpkg --verify` reads every packaged file and
    checks its md5) from a cold node: a lazy mount with a fresh disk cache, with the bulk
    fetch (default) and without, against the full pull. Page cache dropped before each."""
    rows = {}
    for label, args in (("lazy, bulk fetch after 25% (default)", []),
                        ("lazy, bulk fetch off", ["--bulk-after", "off"])):
        lazy, full, fetched = [], [], []
        for _ in range(RUNS):
            cache, mp = f"{WORK}/verify-cache", f"{WORK}/verify-mnt"
            fresh(cache)
            drop_caches()
            t0 = time.perf_counter()
            m = Mount(store, "base", mp, [], ["--cache", cache, *args])
            chroot_workload(m.mountpoint, READ_EVERYTHING)
            lazy.append(time.perf_counter() - t0)
            fetched.append(int(m.stop()["fetched_bytes"]))
            full.append(full_pull(store, [], "base", f"{WORK}/verify-export", READ_EVERYTHING))
        rows[label] = (med(lazy), med(full), med(fetched))
    return rows


def warm_sequential():
    """A 2 GiB file read through the mount from a warm disk cache, page cache dropped,
    next to `cat` of the same file exported to the local disk; then the same with both
    the disk cache and the export on a RAM-backed ext4 (a loop device on tmpfs), which
    takes this VM's disk, whose speed swings between runs, out of the figure and shows
    what the software path itself sustains."""
    src = f"{WORK}/bigfile-src"
    if not os.path.exists(f"{src}/big.bin"):
        os.makedirs(src, exist_ok=True)
        sh(f"head -c {2 << 30} /dev/urandom > {src}/big.bin.tmp && mv {src}/big.bin.tmp {src}/big.bin")
    store, cache, out, mp = f"{WORK}/big-store", f"{WORK}/big-cache", f"{WORK}/big-export", f"{WORK}/big-mnt"
    for d in (store, cache, out):
        fresh(d)
    sh(f"{THAW} --store {store} build {src} --tag big")
    sh(f"{THAW} --store {store} export big {out}")
    # The store is a local directory on the cache's filesystem, whose chunks thaw reads in
    # place without copying them into the disk cache; this part measures a warm disk cache
    # (a remote store's case), so the first read copies them there.
    m = Mount(store, "big", mp, mount_args=["--cache", cache, "--copy-local-store"])
    sh(f"cat {m.mountpoint}/big.bin > /dev/null")  # fills the disk cache
    wait_for_whole_file(m)  # and, after the release, the whole-file cache
    m.stop()
    size = os.path.getsize(f"{out}/big.bin")
    disk = sequential_runs(store, cache, out, mp, size)
    disk_pt = passthrough_runs(store, cache, out, mp, size)
    ram = f"{WORK}/ram"
    image = "/dev/shm/thaw-bench-ram.img"
    os.makedirs(ram, exist_ok=True)
    # The chunk cache, the whole-file cache and the export: three copies of the file.
    sh(f"truncate -s {3 * size + (1 << 30)} {image} && mkfs.ext4 -q -F {image} && mount -o loop {image} {ram}")
    match_readahead(ram, WORK)
    try:
        sh(f"cp -a {cache} {ram}/cache && cp -a {out} {ram}/export")
        in_ram = sequential_runs(store, f"{ram}/cache", f"{ram}/export", mp, size)
        ram_pt = passthrough_runs(store, f"{ram}/cache", f"{ram}/export", mp, size)
    finally:
        sh(f"umount {ram} && rm -f {image}")
    return size, {"fresh": disk, "passthrough": disk_pt}, {"fresh": in_ram, "passthrough": ram_pt}


def match_readahead(ram, disk_dir):
    """Gives the RAM disk's loop device the VM disk's readahead (a loop device gets
    128 KiB). `cat` asks for sequential readahead (posix_fadvise), which doubles the
    window of the file it opened; under FUSE passthrough that file is the FUSE one, and
    the kernel does not pass the advice on to the backing file, so with 128 KiB the
    passthrough read got half the plain read's request size (measured: 0.58x with `cat`,
    0.99x with `dd bs=128k`, which gives no advice). The RAM rows are meant to show the
    software path, not a loop device's default."""
    def queue(path):
        dev = os.stat(path).st_dev
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        for q in (f"{base}/queue/read_ahead_kb", f"{base}/../queue/read_ahead_kb"):
            if os.path.exists(q):
                return q
        return None
    src, dst = queue(disk_dir), queue(ram)
    if src and dst:
        kb = open(src).read().strip()
        with open(dst, "w") as f:
            f.write(kb)
        print(f"  RAM disk readahead set to the VM disk's {kb} KiB", file=sys.stderr)


def wait_for_whole_file(m, timeout=300):
    """Polls the mount's status file until one file is whole in the whole-file cache
    (written by this process, or left by an earlier one and verified)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st = fields(open(m.status).read())
            if int(st.get("whole_files_written", 0)) + int(st.get("whole_files_verified", 0)) >= 1:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the file was not made whole in time")


def passthrough_runs(store, cache, out, mp, size):
    """RUNS reads of big.bin through one mount that has it whole in its whole-file cache
    (so every open is answered with FUSE passthrough and the kernel reads the local
    file), page cache dropped before each, alternating with `cat` of the export."""
    m = Mount(store, "big", mp, mount_args=["--cache", cache])
    sh(f"cat {m.mountpoint}/big.bin > /dev/null")
    wait_for_whole_file(m)

    def thaw_read():
        drop_caches()
        t, _ = timed(f"cat {m.mountpoint}/big.bin > /dev/null")
        return t

    runs = alternate_with_cat(thaw_read, out, size, f"passthrough GB/s ({cache})")
    st = m.stop()
    assert int(st["passthrough_opens"]) >= RUNS, st
    return runs


def sequential_runs(store, cache, out, mp, size):
    """RUNS reads of big.bin through a fresh mount and of the export, alternating which
    goes first (on this VM the order of two back-to-back reads changed their figures
    measurably). Returns the GB/s of each run: (thaw runs, cat runs)."""

    def thaw_read():
        m = Mount(store, "big", mp, mount_args=["--cache", cache])
        drop_caches()
        t, _ = timed(f"cat {m.mountpoint}/big.bin > /dev/null")
        st = m.stop()
        assert int(st["fetched_chunks"]) == 0, "the disk cache should serve everything"
        return t

    return alternate_with_cat(thaw_read, out, size, f"warm sequential GB/s ({cache})")


def alternate_with_cat(thaw_read, out, size, label):
    """RUNS of `thaw_read` (seconds for big.bin) and of `cat` of the export (page cache
    dropped), alternating which goes first. Returns the GB/s of each: (thaw, cat)."""
    thaw_runs, cat_runs = [], []

    def thaw_run():
        thaw_runs.append(size / thaw_read() / 1e9)

    def cat_run():
        drop_caches()
        t, _ = timed(f"cat {out}/big.bin > /dev/null")
        cat_runs.append(size / t / 1e9)

    for i in range(RUNS):
        for run in (thaw_run, cat_run) if i % 2 == 0 else (cat_run, thaw_run):
            run()
    print(f"  {label}: thaw {[round(x, 2) for x in thaw_runs]}, "
          f"cat {[round(x, 2) for x in cat_runs]}", file=sys.stderr)
    return thaw_runs, cat_runs


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
