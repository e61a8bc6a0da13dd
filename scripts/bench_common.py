"""Shared pieces of the benchmark driver: settings from the environment, shell helpers,
and medians."""

import os
import shutil
import statistics
import subprocess
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


def rss(pid):
    """Resident bytes of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) * 1024


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
