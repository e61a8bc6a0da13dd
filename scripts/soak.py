"""Issue 16 fault soak: the whole node under faults, with every byte it serves checked.

A generated tree (busybox and ~128 MB of files, half random, half compressible) is built
into a local store. `thaw serve` runs on it through `--inject-faults` (requests fail,
come back with a bit flipped, or wait), with a disk cache smaller than the data, on its
own tmpfs. Three detached containers run from the image; one reader thread per container
reads random ranges of random files through `/proc/PID/root` (overlay over thaw's FUSE
mount, as the container sees them) and compares every byte with the source, while the
page cache is dropped every few seconds so reads keep reaching thaw. At the same time
prewarms, builds of other images into the same store, `rmi` and `gc --apply` run.

Timeline (fractions of the run): 0.35 the daemon is killed with SIGKILL and restarted
(the containers' mounts are held and adopted: readers carry on); 0.55 the cache
directory is removed under the running daemon; 0.70 it is emptied again and its file
system filled, until 0.85. Checks at the end: zero wrong bytes, no panic in any daemon log, the disk cache
within its bound and the whole-file cache within its own, resident memory growing less
than 5% over the second half, the daemon's open file descriptors back to where the
second half started, the cache stopped growing while the disk was full and a metric said
so, and both tiers back in use after the directory was removed. (Memory and the tiers'
return are judged in long runs only: memory from the later of the second half and 30 s
after the restart, when that leaves at least a minute; the one-minute CI run reports
it.) Samples go to OUT/samples.tsv,
the summary to OUT/summary.json, a plot to OUT/soak.png when matplotlib is there.

Usage: soak.py MINUTES (as root; THAW_BIN names the binary)."""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

THAW = os.path.abspath(os.environ.get("THAW_BIN", "target/release/thaw"))
MINUTES = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
DURATION = MINUTES * 60
WORK = os.environ.get("THAW_SOAK_DIR") or tempfile.mkdtemp(prefix="thaw-soak-")
OUT = os.environ.get("THAW_SOAK_OUT", f"{WORK}/out")
FAULTS = os.environ.get("THAW_SOAK_FAULTS", "fail=0.02,corrupt=0.01,latency-ms=4,seed=7")
TOKEN = "soak-token-0123456789abcdef0123"
MIB = 1 << 20
DISK_BOUND = 48 * MIB
WHOLE_FILE_BOUND = 32 * MIB
MEMORY_BOUND = 32 * MIB
DATA_BYTES = 128 * MIB
READERS = 3
# Seconds a restarted daemon takes to fill its memory cache and buffer pool.
WARMUP = 30

STORE, SRC, CACHE_FS = f"{WORK}/store", f"{WORK}/src", f"{WORK}/cachefs"
CACHE, NODE, RUN = f"{CACHE_FS}/cache", f"{WORK}/node", f"{WORK}/run"
ENV = dict(os.environ, THAW_TOKEN=TOKEN, THAW_RUN_DIR=RUN, RUST_LOG="warn")
ENV.pop("THAW_INJECT_FAULTS", None)


def log(msg):
    print(f"soak [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def thaw(*args, check=True, timeout=300):
    r = subprocess.run([THAW, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"thaw {' '.join(args)}: {r.stderr.strip()}")
    return r


def client(*args, check=True):
    return thaw(args[0], "--server", f"unix:{NODE}/thaw.sock", *args[1:], check=check)


def make_tree():
    """busybox plus DATA_BYTES of files: sizes log-uniform from 512 B to 6 MiB."""
    rng = random.Random(16)
    os.makedirs(f"{SRC}/bin")
    shutil.copy("/bin/busybox", f"{SRC}/bin/busybox")
    files, total, i = {}, 0, 0
    while total < DATA_BYTES:
        size = int(2 ** rng.uniform(9, 22.6))
        rel = f"data/d{i % 16:02d}/f{i:04d}"
        os.makedirs(os.path.dirname(f"{SRC}/{rel}"), exist_ok=True)
        if i % 2:
            body = os.urandom(size)
        else:
            block = os.urandom(4096)
            body = b"".join(block[:4000] + n.to_bytes(8, "little") for n in range(size // 4008 + 1))[:size]
        with open(f"{SRC}/{rel}", "wb") as f:
            f.write(body)
        files[rel] = size
        total += size
        i += 1
    return files


class Daemon:
    """`thaw serve` on the faulty store; killed, restarted and stopped by the soak."""

    def __init__(self):
        self.proc, self.url, self.logs = None, None, []

    def start(self):
        ready = f"{NODE}/ready"
        if os.path.exists(ready):
            os.remove(ready)
        logfile = f"{OUT}/serve-{len(self.logs)}.log"
        self.logs.append(logfile)
        self.proc = subprocess.Popen(
            [THAW, "--store", STORE, "--inject-faults", FAULTS, "serve", "--listen", "127.0.0.1:0",
             "--cache", CACHE, "--cache-size", str(DISK_BOUND), "--memory-cache", str(MEMORY_BOUND),
             "--whole-file-cache", str(WHOLE_FILE_BOUND), "--state-dir", f"{NODE}/state",
             "--socket", f"{NODE}/thaw.sock", "--mount-root", f"{NODE}/mnt", "--ready-file", ready],
            env=ENV, stdout=subprocess.DEVNULL, stderr=open(logfile, "w"))
        deadline = time.time() + 60
        while True:
            text = open(ready).read() if os.path.exists(ready) else ""
            urls = [l for l in text.splitlines() if l.startswith("http://")]
            if urls:
                self.url = urls[0]
                return
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start: {open(logfile).read()[-2000:]}")
            time.sleep(0.05)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def metrics(self):
        req = urllib.request.Request(f"{self.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r'^(thaw_cache_\w+)\{tier="disk"\} (\S+)$', line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


class Readers:
    """One thread per container: random ranges of random files, every byte compared."""

    def __init__(self, pids, files):
        self.pids, self.files, self.names = pids, files, sorted(files)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reads = self.bytes = self.wrong = self.eio = 0
        self.errors, self.mismatches = [], []
        self.sources = {n: os.open(f"{SRC}/{n}", os.O_RDONLY) for n in self.names}
        self.threads = [threading.Thread(target=self.run, args=(p, k), daemon=True) for k, p in enumerate(pids)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, pid, k):
        rng = random.Random(k)
        while not self.stop.is_set():
            name = rng.choice(self.names)
            size = self.files[name]
            if rng.random() < 0.3:
                off, n = 0, size
            else:
                off = rng.randrange(size)
                n = min(size - off, rng.randint(1, MIB))
            try:
                fd = os.open(f"/proc/{pid}/root/{name}", os.O_RDONLY)
                try:
                    got = read_range(fd, off, n)
                finally:
                    os.close(fd)
            except OSError as e:
                with self.lock:
                    if e.errno == errno.EIO:
                        self.eio += 1
                    else:
                        self.errors.append(f"{name}: {e}")
                continue
            want = read_range(self.sources[name], off, n)
            bad = sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want)) if got != want else 0
            with self.lock:
                self.reads += 1
                self.bytes += len(want)
                if bad:
                    self.wrong += bad
                    self.mismatches.append(f"{name} at {off}+{n}: {bad} bytes differ")

    def snapshot(self):
        with self.lock:
            return self.reads, self.bytes, self.wrong, self.eio, len(self.errors)


def read_range(fd, off, n):
    parts = []
    while n > 0:
        b = os.pread(fd, n, off)
        if not b:
            break
        parts.append(b)
        off += len(b)
        n -= len(b)
    return b"".join(parts)


def container_pids():
    """The init of each soak container, by its unique sleep argument."""
    pids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            args = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if len(args) >= 3 and args[0] == b"/bin/busybox" and args[1] == b"sleep" and args[2].startswith(b"99999"):
            pids[int(args[2])] = int(p)
    return [pids[k] for k in sorted(pids)]


def churn(stop, stats):
    """Prewarms, builds of other images into the store, rmi and gc, one after another."""
    rng = random.Random(99)
    names = sorted(os.listdir(f"{SRC}/data/d00"))
    k = 0
    while not stop.is_set():
        action = rng.choice(["prewarm", "build", "build", "gc"])
        try:
            if action == "prewarm":
                r = client("prewarm", "soak", "--scope", "all", check=False)
            elif action == "build":
                tree = f"{WORK}/churn-{k}"
                os.makedirs(tree)
                for n in rng.sample(names, min(8, len(names))):
                    shutil.copy(f"{SRC}/data/d00/{n}", f"{tree}/{n}")
                with open(f"{tree}/new", "wb") as f:
                    f.write(os.urandom(rng.randint(1, 2 * MIB)))
                r = thaw("--store", STORE, "build", tree, "--tag", f"churn-{k}", check=False)
                shutil.rmtree(tree)
                if k >= 2:
                    thaw("--store", STORE, "rmi", f"churn-{k - 2}", check=False)
                k += 1
            else:
                r = thaw("--store", STORE, "gc", "--apply", "--safety-period", "1", check=False)
            stats[action] = stats.get(action, 0) + 1
            if r.returncode != 0:
                stats[f"{action}_failed"] = stats.get(f"{action}_failed", 0) + 1
        except Exception as e:  # a churn step failing is counted, the soak goes on
            stats["churn_errors"] = stats.get("churn_errors", 0) + 1
            log(f"churn {action}: {e}")
        stop.wait(rng.uniform(0.5, 2.0))


def du(path):
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    return total


def fs_used(path):
    """Bytes in use on the file system of `path` (deleted files still open count)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def proc_stats(pid):
    try:
        status = open(f"/proc/{pid}/status").read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, AttributeError):
        return 0, 0


def sample_loop(stop, daemon, readers, samples, start):
    while not stop.is_set():
        t = time.time() - start
        rss, fds = proc_stats(daemon.proc.pid)
        try:
            m = daemon.metrics()
        except Exception:
            m = {}
        reads, nbytes, wrong, eio, errors = readers.snapshot()
        samples.append(dict(t=round(t, 2), pid=daemon.proc.pid, rss=rss, fds=fds, cache_du=du(CACHE),
                            files_du=du(f"{CACHE}/files"), fs_used=fs_used(CACHE_FS),
                            cache_bytes=m.get("thaw_cache_bytes", -1), cache_full=m.get("thaw_cache_full", -1),
                            write_errors=m.get("thaw_cache_write_errors_total", -1), reads=reads,
                            bytes=nbytes, wrong=wrong, eio=eio, errors=errors))
        stop.wait(1.0)


def drop_caches(stop):
    while not stop.is_set():
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        stop.wait(3.0)


def setup():
    os.makedirs(OUT, exist_ok=True)
    for d in (NODE, RUN, CACHE_FS):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "soak-cache", CACHE_FS], check=True)
    files = make_tree()
    log(f"tree: {len(files)} files, {sum(files.values()) // MIB} MiB; building")
    thaw("--store", STORE, "build", SRC, "--tag", "soak")
    return files


def start_containers(daemon):
    for k in range(READERS):
        client("run", "--detach", "--name", f"soak{k}", "soak", "--", "/bin/busybox", "sleep", f"99999{k}")
    deadline = time.time() + 60
    while len(container_pids()) < READERS:
        if time.time() > deadline:
            raise RuntimeError("the containers did not start")
        time.sleep(0.1)
    return container_pids()


def fill_disk():
    """Leaves 256 KiB free on the cache's file system (appending to the filler, so it can
    be called again to take space freed since); returns the filler's path."""
    st = os.statvfs(CACHE_FS)
    free = st.f_bavail * st.f_frsize - 256 * 1024
    path = f"{CACHE_FS}/filler"
    try:
        f = open(path, "ab")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return None  # full already
    with f:
        chunk = b"\0" * MIB
        while free > 0:
            try:
                f.write(chunk[:min(free, MIB)])
                f.flush()
            except OSError:
                break
            free -= MIB
    return path


def run_timeline(daemon, start, events):
    def at(frac):
        delay = start + frac * DURATION - time.time()
        if delay > 0:
            time.sleep(delay)

    at(0.35)
    log("killing the daemon with SIGKILL and starting another")
    daemon.kill9()
    daemon.start()
    events.append(("restart", time.time() - start))
    at(0.55)
    log("removing the cache directory under the running daemon")
    shutil.rmtree(CACHE, ignore_errors=True)
    events.append(("cache removed", time.time() - start))
    at(0.70)
    # Emptied first, so that only the full disk keeps the cache from growing back.
    log("emptying the cache and filling its file system")
    shutil.rmtree(CACHE, ignore_errors=True)
    filler = fill_disk()
    # Files removed above that the daemon still had open (a whole file being copied
    # into the cache) free their space only when it closes them, and the cache could
    # then grow into it: take that space too before the full disk is judged (seen once
    # in scripts/test.sh: the cache grew 528 KiB with 256 KiB left free).
    time.sleep(1.0)
    fill_disk()
    events.append(("disk full", time.time() - start))
    at(0.85)
    if filler:
        os.remove(filler)
    events.append(("disk freed", time.time() - start))
    at(1.0)


def wait_fds(pid, want, timeout=15):
    deadline = time.time() + timeout
    fds = proc_stats(pid)[1]
    while fds > want and time.time() < deadline:
        time.sleep(0.2)
        fds = proc_stats(pid)[1]
    return fds


def memory_growth(samples, restart):
    """The daemon's resident memory at the end of the second half against its start
    (medians of the first and last fifth of it): (growth, whether it is judged). The
    restarted daemon's first WARMUP seconds fill its caches and are not growth; a window
    shorter than a minute after them (the one-minute CI run) is reported, not judged."""
    begin = max(DURATION / 2, restart + WARMUP)
    half = [s for s in samples if s["t"] >= begin and s["rss"]]
    if len(half) < 4:
        return 0.0, False
    fifth = max(2, len(half) // 5)
    first = sorted(s["rss"] for s in half[:fifth])
    last = sorted(s["rss"] for s in half[-fifth:])
    growth = last[len(last) // 2] / first[len(first) // 2] - 1
    return growth, DURATION - begin >= 60


def verdict(daemon, readers, samples, events, churn_stats):
    """The checks the issue asks for; returns (summary, failures)."""
    failures = []
    reads, nbytes, wrong, eio, nerrors = readers.snapshot()
    logs = "".join(open(p).read() for p in daemon.logs)
    injected = logs.count("injected fault")
    corrupted = logs.count("injected corruption")
    if wrong:
        failures.append(f"{wrong} wrong bytes served: {readers.mismatches[:5]}")
    if nerrors:
        failures.append(f"{nerrors} read errors other than EIO: {readers.errors[:5]}")
    if "panicked" in logs:
        failures.append("a daemon panicked")
    if "adopted 3 running container" not in logs:
        failures.append("the restarted daemon did not adopt the 3 containers")
    if reads == 0:
        failures.append("no reads")
    bound = DISK_BOUND + WHOLE_FILE_BOUND + 8 * MIB  # entries' trailers, metadata copies
    over = [s for s in samples if s["cache_du"] > bound]
    if over:
        failures.append(f"the cache held {max(s['cache_du'] for s in over)} bytes, above {bound}")
    # The whole-file tier alone, files being written included; 1 MiB for rounding to
    # blocks (4 KiB each for at most 256 files: only files of 128 KiB or more go there).
    files_bound = WHOLE_FILE_BOUND + MIB
    over = [s for s in samples if s["files_du"] > files_bound]
    if over:
        failures.append(f"the whole-file cache held {max(s['files_du'] for s in over)} bytes, above {files_bound}")
    growth, judged = memory_growth(samples, dict(events)["restart"])
    if judged and growth >= 0.05:
        failures.append(f"resident memory grew {growth:.1%} over the second half")
    full, freed = dict(events)["disk full"], dict(events)["disk freed"]
    window = [s for s in samples if full + 2 <= s["t"] <= freed]
    if window:
        grew = window[-1]["cache_du"] - window[0]["cache_du"]
        if grew > 512 * 1024:
            failures.append(f"the cache grew {grew} bytes while its disk was full")
        if not any(s["cache_full"] == 1 for s in window):
            failures.append("no metric said the cache's disk was full")
    # Both tiers come back after the cache directory was removed (judged where a minute
    # or more passed before the disk was filled: the long runs).
    removed = dict(events)["cache removed"]
    after = [s for s in samples if removed + 5 <= s["t"] < full]
    if full - removed >= 60:
        if not any(s["cache_du"] - s["files_du"] > 0 for s in after):
            failures.append("the disk cache did not come back after its directory was removed")
        if not any(s["files_du"] > 0 for s in after):
            failures.append("no file was written whole after the cache directory was removed")
    summary = dict(minutes=MINUTES, faults=FAULTS, reads_checked=reads, bytes_compared=nbytes,
                   wrong_bytes=wrong, eio_errors=eio, other_read_errors=nerrors,
                   faults_injected=injected, corruptions_injected=corrupted,
                   rss_growth_second_half=round(growth, 4), rss_growth_judged=judged, events=events, churn=churn_stats,
                   peak_cache_bytes=max(s["cache_du"] for s in samples), cache_bound=bound,
                   peak_whole_file_bytes=max(s["files_du"] for s in samples), whole_file_bound=files_bound)
    return summary, failures


def plot(samples, events):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not here: no plot (the samples are in samples.tsv)")
        return
    t = [s["t"] / 60 for s in samples]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    a.plot(t, [s["rss"] / MIB for s in samples])
    a.set_ylabel("daemon RSS, MiB")
    b.plot(t, [s["fds"] for s in samples])
    b.set_ylabel("daemon open fds")
    c.plot(t, [s["cache_du"] / MIB for s in samples])
    c.set_ylabel("disk cache, MiB")
    c.set_xlabel("minutes")
    for ax in (a, b, c):
        for name, when in events:
            ax.axvline(when / 60, color="grey", linestyle=":")
    for name, when in events:
        a.annotate(name, (when / 60, a.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    fig.suptitle(f"thaw soak, {MINUTES:g} min, faults {FAULTS}")
    fig.tight_layout()
    fig.savefig(f"{OUT}/soak.png", dpi=90)


def main():
    # A soak stopped with SIGTERM still stops its containers and daemon (the `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("soak: stopped by SIGTERM"))
    files = setup()
    daemon = Daemon()
    daemon.start()
    stop, samples, events, churn_stats = threading.Event(), [], [], {}
    readers = None
    try:
        pids = start_containers(daemon)
        log(f"containers: {pids}; soaking for {MINUTES:g} min with faults {FAULTS}")
        readers = Readers(pids, files)
        start = time.time()
        threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in [
            (sample_loop, (stop, daemon, readers, samples, start)), (drop_caches, (stop,)),
            (churn, (stop, churn_stats))]]
        readers.start()
        for t in threads:
            t.start()
        run_timeline(daemon, start, events)
        readers.stop.set()
        stop.set()
        for t in readers.threads + threads:
            t.join(timeout=60)
        second_half = [s for s in samples if s["t"] >= DURATION / 2]
        baseline = second_half[0]["fds"] if second_half else 0
        fds_end = wait_fds(daemon.proc.pid, baseline)
        summary, failures = verdict(daemon, readers, samples, events, churn_stats)
        summary.update(fds_second_half_start=baseline, fds_end=fds_end)
        if fds_end > baseline:
            failures.append(f"the daemon holds {fds_end} fds, {baseline} when the second half began")
    finally:
        stop.set()
        if readers:
            readers.stop.set()
        for k in range(READERS):
            client("stop", "-t", "1", f"soak{k}", check=False)
            client("rm", f"soak{k}", check=False)
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=60)
        subprocess.run(["umount", "-l", CACHE_FS], check=False)
    with open(f"{OUT}/samples.tsv", "w") as f:
        keys = list(samples[0]) if samples else []
        f.write("\t".join(keys) + "\n")
        for s in samples:
            f.write("\t".join(str(s[k]) for k in keys) + "\n")
    summary["failures"] = failures
    with open(f"{OUT}/summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    plot(samples, events)
    print(json.dumps(summary, indent=1))
    if failures:
        log("FAILED: " + "; ".join(failures))
        sys.exit(1)
    log(f"passed: {summary['reads_checked']} reads, {summary['bytes_compared']} bytes compared, 0 wrong")


if __name__ == "__main__":
    main()
