#!/usr/bin/env python3
"""Reads the same 2 GiB three ways, page cache dropped before each: as ~1700 files of 256 KiB
to 2 MiB with O_DIRECT and with buffered reads (8 threads, as thaw's disk cache holds
chunks), and as one file with `cat`. Shows whether O_DIRECT helps or hurts on this disk.

Usage (root): scripts/disk_read_modes.py [DIR] [ROUNDS]; writes DIR (default
/var/tmp/thaw-read-modes, about 4 GiB) and removes it afterwards."""
import mmap
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

DIR = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/thaw-read-modes"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
TOTAL = 2 << 30


def drop():
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def write_files():
    random.seed(1)
    sizes, total = [], 0
    while total < TOTAL:
        s = random.randint(256 << 10, 2 << 20)
        sizes.append(s)
        total += s
    os.makedirs(f"{DIR}/small", exist_ok=True)
    data = os.urandom(2 << 20)
    for i, s in enumerate(sizes):
        with open(f"{DIR}/small/{i:05d}", "wb") as f:
            f.write(data[:s])
    subprocess.run(f"head -c {TOTAL} /dev/urandom > {DIR}/one.bin", shell=True, check=True)
    return sizes


def read_direct(job):
    path, n = job
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.preadv(fd, [mmap.mmap(-1, (n + 4095) // 4096 * 4096)], 0)
    finally:
        os.close(fd)


def read_buffered(job):
    path, n = job
    with open(path, "rb", buffering=0) as f:
        return len(f.read(n))


def main():
    sizes = write_files()
    jobs = [(f"{DIR}/small/{i:05d}", s) for i, s in enumerate(sizes)]

    def many(fn):
        with ThreadPoolExecutor(8) as ex:
            return sum(ex.map(fn, jobs))

    def cat():
        subprocess.run(f"cat {DIR}/one.bin > /dev/null", shell=True, check=True)
        return TOTAL

    tests = [("files, O_DIRECT", lambda: many(read_direct)),
             ("files, buffered", lambda: many(read_buffered)),
             ("one file, cat", cat)]
    try:
        for r in range(ROUNDS):
            out = []
            for name, fn in (tests if r % 2 == 0 else tests[::-1]):
                drop()
                start = time.perf_counter()
                n = fn()
                out.append(f"{name}: {n / (time.perf_counter() - start) / 1e9:.2f} GB/s")
            print("  ".join(sorted(out)), flush=True)
    finally:
        shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
