"""Issue 4 benchmarks: cold start through the node daemon with and without prefetch, a
node prewarmed in advance, and HTTP load with wrk."""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request

from bench_common import (RUNS, THAW, WORK, sh, drop_caches, fresh, med, rss)
from bench_mount import THROTTLE, chroot_workload, full_pull, trace_stores

BENCH_TOKEN = "bench-token-0123456789"
MOUNT_ROOT = f"{WORK}/serve-mnt"


class Daemon:
    """A `thaw serve` on loopback with a fresh (or given) disk cache."""

    def __init__(self, store, cache, global_args=(), serve_args=()):
        self.state = f"{WORK}/serve-state"
        ready = f"{WORK}/serve-ready"
        if os.path.exists(ready):
            os.remove(ready)
        # The API on loopback TCP needs a token; the socket and the mount root live in WORK.
        env = dict(os.environ, THAW_TOKEN=BENCH_TOKEN)
        self.proc = subprocess.Popen([THAW, "--store", store, *global_args, "serve", "--listen", "127.0.0.1:0",
                                      "--socket", f"{WORK}/serve.sock", "--mount-root", MOUNT_ROOT,
                                      "--cache", cache, "--state-dir", self.state, "--ready-file", ready, *serve_args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("thaw serve failed: " + self.proc.stderr.read().decode())
            time.sleep(0.005)
        while not any(l.startswith("http://") for l in open(ready).read().split()):
            time.sleep(0.005)
        self.url = next(l for l in open(ready).read().split() if l.startswith("http://"))

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {BENCH_TOKEN}"})
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


def prefetch_cold_start():
    """The cold start of issue 3 through the daemon: no prefetch, trace prewarm issued with
    the start, and a node prewarmed in advance, next to the full pull and a local run."""
    store, base_store, (image, records) = trace_stores()
    export = f"{WORK}/prefetch-export"
    fresh(export)
    sh(f"{THAW} --store {store} export base {export}")
    throttle = ["--throttle", THROTTLE]
    cache = f"{WORK}/serve-cache"
    mp = f"{MOUNT_ROOT}/prefetch"
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
        rows["full pull (`thaw export`, then the workload)"].append(
            full_pull(store, throttle, image, f"{WORK}/prefetch-full"))
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
    # The daemon limits each caller to 200 requests a second by default (answering 429 past
    # that); this part measures what the HTTP server itself can answer, so the limit is off.
    d = Daemon(store, cache, serve_args=("--rate-limit", "0"))
    try:
        rss0 = rss(d.proc.pid) // 1024
        # Authenticated, as a client would be: without the token every answer is a 401.
        out = sh(f"wrk -t2 -c100 -d10s -H 'Authorization: Bearer {BENCH_TOKEN}' {d.url}/v1/cache")
        rss1 = rss(d.proc.pid) // 1024
    finally:
        d.stop()
    rps = float(out.split("Requests/sec:")[1].split()[0])
    total = int(out.split(" requests in ")[0].split()[-1])
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(out.split("Non-2xx or 3xx responses:")[1].split()[0]) if "Non-2xx" in out else 0
    assert non2xx == 0, f"{non2xx} answers were not 2xx: the load measured errors"
    return {"requests": total, "rps": rps, "socket_errors": errors, "non_2xx": non2xx, "rss_kb": (rss0, rss1)}
