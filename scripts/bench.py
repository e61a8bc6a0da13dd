#!/usr/bin/env python3
"""Benchmark driver for scripts/bench.sh: runs thaw and its baselines in the same
session, takes medians over RUNS repetitions, and writes docs/benchmarks.md."""
import datetime
import json
import os
import platform
import sys
import time

from bench_common import (RUNS, WORK, OUT, THAW, ROOTFS, sh, cell, med, fresh)
from bench_store import build_throughput, dedup, read_throughput
from bench_mount import (WORKLOAD, THROTTLE, FETCH_AROUND_CHOSEN, cold_start, warm_sequential,
                         metadata_walk, read_everything, mount_start)
from bench_daemon import prefetch_cold_start, wrk_load
import bench_weights
from bench_run import run_start, markdown as run_markdown
import bench_ml


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


def cold_markdown(cold):
    """The cold-start table: one row per store and fetch-around setting."""
    rows = ["| store | lazy s | full pull s | lazy / full | bytes read (served) | bytes fetched | fetched / read "
            "| fraction of image read | fetch-around chosen |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, (lazy, full, fetched, served, size) in cold.items():
        chosen = FETCH_AROUND_CHOSEN.get(label)
        rows.append(f"| {label} | {lazy:.3f} | {full:.3f} | {lazy / full:.2f} | {served:.0f} | {fetched:.0f} | "
                    f"{fetched / served:.2f} | {served / size:.3f} | {'' if chosen is None else f'{chosen:.0f}'} |")
    return "\n".join(rows)


def cold_store():
    """The Debian rootfs in its own store (built once, reused while complete)."""
    store = f"{WORK}/cold-store"
    if not os.path.exists(f"{store}/.bench-complete"):
        fresh(store)
        sh(f"{THAW} --store {store} build {ROOTFS} --tag base && touch {store}/.bench-complete")
    return store


def read_everything_markdown(store):
    """The read-everything rows (`dpkg --verify`, lazy against the full pull)."""
    rows = ["| read everything (`dpkg --verify`) | lazy s | full pull s | lazy / full | bytes fetched |",
            "|---|---:|---:|---:|---:|"]
    for label, (lazy, full, fetched) in read_everything(store).items():
        rows.append(f"| {label} | {lazy:.3f} | {full:.3f} | {lazy / full:.2f} | {fetched:.0f} |")
    return "\n".join(rows)


def quick():
    """The quick mode: the read-path figures a change to it most likely moves."""
    store = cold_store()
    print(cold_markdown(cold_start(store, quick=True)))
    print()
    print(read_everything_markdown(store))
    print()
    size, disk, ram = warm_sequential()
    for where, runs in (("VM disk", disk), ("RAM-backed ext4", ram)):
        for how, (thaw, cat) in runs.items():
            print(f"warm sequential {size >> 30} GiB, {where}, {how}: thaw {med(thaw):.2f} GB/s, "
                  f"cat {med(cat):.2f} GB/s, {med(thaw) / med(cat):.2f}x")
    print()
    print(mount_start_markdown(mount_start(store)))


def mount_start_markdown(runs):
    """The mount-start rows: median ms, ratio to the first row, every run."""
    rows = ["| mount start, store throttled | median ms | / first row | runs ms |", "|---|---:|---:|---|"]
    first = None
    for label, times in runs.items():
        first = first or med(times)
        rows.append(f"| {label} | {med(times) * 1e3:.0f} | {med(times) / first:.2f} | "
                    f"{', '.join(f'{t * 1e3:.0f}' for t in times)} |")
    return "\n".join(rows)


def write_section(title, only, filename, started, about, table):
    """A section measured apart from the full run: written to docs/FILENAME (which the full
    run includes) and printed. `about` says what it measures."""
    text = "\n".join([
        f"## {title}",
        "",
        f"`RUNS={RUNS} THAW_BENCH_ONLY={only} scripts/bench.sh` on {datetime.date.today()} ({machine()}), "
        f"{(time.time() - started) / 60:.0f} minutes. " + about,
        "",
        table,
    ])
    with open(os.path.join(os.path.dirname(OUT), filename), "w") as f:
        f.write(text + "\n")
    print(text)


def ml_results():
    """The machine-learning image's rows (issue 14)."""
    started = time.time()
    table = bench_ml.markdown(os.environ["THAW_GPU_ROOTFS"])
    write_section("Lazy mount: the machine-learning image (issue 14)", "ml", "ml-results.md", started,
                  bench_ml.__doc__.split(': ', 1)[1].replace('\n', ' '), table)


def containerd_results():
    """The containerd rows (issue 15)."""
    import bench_containerd
    started = time.time()
    table = bench_containerd.markdown(bench_containerd.containerd_rows())
    write_section("containerd: pull + create + run with thaw's snapshotter (issue 15)", "containerd",
                  "containerd-results.md", started, " ".join(bench_containerd.__doc__.split()), table)


def large_results():
    """The large images' memory (issue 16); the full run does not measure it (it needs
    about 25 GB of disk) but includes its last figures."""
    import bench_large
    started = time.time()
    table = bench_large.markdown(bench_large.measure())
    write_section("Large images: memory per file (issue 16)", "large", "large-results.md", started,
                  " ".join(bench_large.__doc__.split()), table)


def main():
    os.makedirs(WORK, exist_ok=True)
    # Stores made by an earlier version of thaw are not reused.
    if os.path.exists(f"{WORK}/prefetch-stores.json"):
        os.remove(f"{WORK}/prefetch-stores.json")
    only = os.environ.get("THAW_BENCH_ONLY")
    started = time.time()
    if only == "quick":
        quick()
        print(f"quick run took {(time.time() - started) / 60:.1f} minutes", file=sys.stderr)
        return
    if only == "prefetch":
        print(json.dumps(prefetch_cold_start(), indent=1))
        print(json.dumps(wrk_load(), indent=1))
        return
    if only == "run":
        names = os.environ.get("THAW_BENCH_RUN_IMAGES", "debian,gpu-style").split(",")
        print(run_markdown(run_start(names)))
        return
    if only == "cold":
        store = cold_store()
        print(cold_markdown(cold_start(store, quick=True)))
        print()
        print(read_everything_markdown(store))
        print()
        print(mount_start_markdown(mount_start(store)))
        return
    if only == "containerd":
        containerd_results()
        return
    if only == "build":
        tree_bytes, rows = build_throughput()
        for name, m, mbs, ratio, ratio_file in rows:
            print(f"{name}: {m:.3f} s, {mbs:.0f} MB/s, {ratio:.2f}x tar | zstd > /dev/null, "
                  f"{ratio_file:.2f}x tar | zstd > file")
        return
    if only == "weights":
        bench_weights.main()
        return
    if only == "ml":
        ml_results()
        return
    if only == "large":
        large_results()
        return
    if only == "autoscale":
        import bench_autoscale
        bench_autoscale.main()
        return
    if only == "warm_sequential":
        size, disk, ram = warm_sequential()
        for where, runs in (("disk", disk), ("ram", ram)):
            for how, (thaw, cat) in runs.items():
                print(f"{where}, {how}: thaw {med(thaw):.2f} GB/s, cat {med(cat):.2f} GB/s, "
                      f"{med(thaw) / med(cat):.2f}x")
        return
    print("build throughput ...", file=sys.stderr)
    tree_bytes, build_rows = build_throughput()
    print("dedup ...", file=sys.stderr)
    store, first, again, plus, pkg, pkg_bytes = dedup()
    print("read throughput ...", file=sys.stderr)
    chunk_bytes, file_bytes, reads = read_throughput(store)
    print("lazy mount cold start ...", file=sys.stderr)
    cold = cold_start(store)
    print("read everything and mount start ...", file=sys.stderr)
    everything = read_everything_markdown(store)
    starts_of_mounts = mount_start_markdown(mount_start(store))
    print("warm sequential read ...", file=sys.stderr)
    big_size, big_disk, big_ram = warm_sequential()
    print("metadata walk ...", file=sys.stderr)
    walk = metadata_walk(store)
    print("prefetch cold start ...", file=sys.stderr)
    prefetch, trace_records = prefetch_cold_start()
    print("wrk load ...", file=sys.stderr)
    load = wrk_load()
    print("weights to host memory ...", file=sys.stderr)
    bench_weights.main()
    print("thaw run against full pulls ...", file=sys.stderr)
    starts = run_start()

    lines = []
    w = lines.append
    w("# thaw benchmarks")
    w("")
    w(f"Generated by `scripts/bench.sh` on {datetime.date.today().isoformat()}; machine: {machine()}.")
    w(f"Every figure is the median of {RUNS} runs measured in the same session as its baseline.")
    w("These machines are shared and noisy: compare ratios, not absolute numbers, across runs.")
    w(f"This full run took {(time.time() - started) / 60:.0f} minutes. `scripts/bench.sh --quick` prints the "
      "read-path figures only (3 runs each: the local and throttled cold starts, the read-everything workload, "
      "the warm sequential read with and without passthrough, and the mount start) and how long they took.")
    w("")
    w("## Build throughput (issues 2 and 14)")
    w("")
    w(f"Tree: debootstrap `--variant=minbase bookworm` ({tree_bytes / 1e6:.1f} MB of file contents), page cache warm.")
    w("Throughput is file bytes read per second. Target: thaw at least 1.0× `tar | zstd -3 -T0` (issue 14; "
      "0.8× in issue 2). `THAW_BENCH_ONLY=build scripts/bench.sh` runs this part alone.")
    w("")
    w("The local store writes about 90 MB of packs to the disk, which `> /dev/null` does not: the last column "
      "compares with the same pipeline writing its archive to a file on the store's disk.")
    w("")
    w("| command | median s | MB/s | × tar+zstd > /dev/null | × tar+zstd > file |")
    w("|---|---:|---:|---:|---:|")
    for name, m, mbps, ratio, ratio_file in build_rows:
        w(f"| {cell(name)} | {m:.3f} | {mbps:.1f} | {ratio:.2f} | {ratio_file:.2f} |")
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
      "Targets: lazy at most 0.3× the full pull; bytes fetched at most 3× the bytes read. Bytes read are the bytes "
      "the mount served to the kernel, its readahead included (the mount sets that to 1 MiB; with the kernel's "
      "default 128 KiB the same workload was served 11.4 MB).")
    w("")
    w(cold_markdown(cold))
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
    w("## Lazy mount: read everything, and the mount's start (issue 14)")
    w("")
    w("`dpkg --verify` (reads every packaged file and checks its md5) in a chroot of a fresh mount with a fresh "
      "disk cache, page cache dropped, against the full pull (`thaw export`, then the same command). Target: at "
      "most 1.0×. Then the time from starting `thaw --throttle 20,1000 mount` to the mount point appearing, with "
      "the cache's copies of the manifest, listing and pack indexes removed first and kept.")
    w("")
    w(everything)
    w("")
    w(starts_of_mounts)
    w("")
    w("## Lazy mount: warm sequential read (issue 3)")
    w("")
    w(f"A {big_size / 2**30:.0f} GiB incompressible file read with `cat` through the mount, page cache dropped, next "
      "to `cat` of the exported file (page cache dropped), alternating which goes first. Two ways: *fresh mount* is a "
      "new `thaw mount` process whose chunk cache is warm: its first open is served through FUSE reads (every cache "
      "entry's checksum checked on read; an entry of the whole-file cache left by another process is never used "
      "before it is checked again). *Passthrough* is one mount that has the file whole in its whole-file cache: "
      "each open is answered with FUSE passthrough and the kernel reads the local file. Targets (issue 14): at "
      "least 0.9× on the VM disk and 0.7× on the RAM-backed disk. The RAM rows put the caches and the export on a "
      "RAM-backed ext4 (a loop device on tmpfs): this VM's disk swings between about 1 and 2.7 GB/s from one "
      "minute to the next, and those rows show what each path itself sustains on 2 cores. The loop device gets the "
      "VM disk's readahead: `cat` advises sequential reads, which doubles the plain file's readahead window but is "
      "not passed on to a passthrough backing file, so with a loop device's 128 KiB the passthrough row measured "
      "that default (0.58×), not the path (see the notes at the end).")
    w("")
    w("| where | how | thaw mount, median GB/s | cat of the export, median GB/s | ratio | runs (thaw; cat) |")
    w("|---|---|---:|---:|---:|---|")
    for where, by_how in (("VM disk", big_disk), ("RAM-backed ext4", big_ram)):
        for how, (thaw, cat) in by_how.items():
            runs = f"{', '.join(f'{x:.2f}' for x in thaw)}; {', '.join(f'{x:.2f}' for x in cat)}"
            w(f"| {where} | {how} | {med(thaw):.3f} | {med(cat):.3f} | {med(thaw) / med(cat):.2f} | {runs} |")
    w("")
    w("Where the time goes (`perf record` on the mount during the read from the VM disk): copying cache entries "
      "out of the page cache (about 14%), assembling replies that span two chunks (about 12%: `fuser` 0.18 replies "
      "from one buffer, so such a reply is copied once), the kernel copying each reply into the mount's page cache "
      "(about 10%), page cache locking (about 10%), page faults (about 8%), the XXH3 check of each entry (about 4%; "
      "BLAKE3 was 24%) and context switches (about 4%). `cat` of the export does one copy; the mount path does "
      "three, on 2 cores shared with `cat`. On the VM disk, `cat` of a file written minutes before reads at up to "
      "2.7 GB/s, later at 1 to 1.5 GB/s.")
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
        w(f"`wrk -t2 -c100 -d10s` with the daemon's token against `GET /v1/cache` on loopback, the daemon "
          f"started with `--rate-limit 0` (its default, 200 a second per caller, would answer 429 past that): "
          f"{load['requests']} requests, "
          f"{load['rps']:.0f} requests/s, {load['socket_errors']} socket errors, {load['non_2xx']} non-2xx; "
          f"daemon RSS {load['rss_kb'][0]} kB before, {load['rss_kb'][1]} kB after.")
    else:
        w("`wrk` is not installed; skipped.")
    w("")
    w(run_markdown(starts))
    # Sections measured by other scripts, not by this run: the GPU check on a lent GPU
    # machine (scripts/gpu-bench.sh), the weights (bench_weights.py, THAW_BENCH_ONLY=weights), the
    # machine-learning image (bench_ml.py, THAW_BENCH_ONLY=ml), side-by-side binary comparisons (bench_ab.sh) and
    # the autoscaler's (THAW_BENCH_ONLY=autoscale, bench_autoscale.py) and containerd's
    # (THAW_BENCH_ONLY=containerd, bench_containerd.py), and the large images' memory
    # (THAW_BENCH_ONLY=large, bench_large.py: about 25 GB of disk).
    # Last, the hand-written analyses and earlier runs (docs/benchmarks-notes.md), which a full
    # run must not erase.
    for extra in ("weights-results.md", "ml-results.md", "gpu-results.md", "ab-results.md", "autoscale-results.md",
                  "containerd-results.md", "large-results.md", "benchmarks-notes.md"):
        path = os.path.join(os.path.dirname(OUT), extra)
        if os.path.exists(path):
            with open(path) as f:
                w(f.read().rstrip())
            w("")
    plot = plot_cold_start(cold)
    if plot:
        w(f"![Cold start: lazy mount vs full pull]({os.path.relpath(plot, os.path.dirname(OUT))})")
        w("")
    # The Markdown first: a full run's figures must not be lost to a failure after them.
    with open(OUT, "w") as f:
        f.write("\n".join(lines))
    with open(OUT + ".json", "w") as f:
        json.dump({"build": build_rows, "reads": reads, "cold_start": cold, "warm_sequential": {"bytes": big_size, "disk": big_disk, "ram": big_ram},
                   "metadata_walk": walk, "prefetch_cold_start": prefetch, "wrk": load}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
