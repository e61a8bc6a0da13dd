"""Issue 11 benchmark: from a registry image to the container's output. `thaw build
docker://...` (the conversion, on its own), then `thaw run` from a cold node cache and a
cold page cache, against two full pulls from the same registry on loopback: `skopeo copy`
+ `umoci unpack` + `runc run`, and containerd 1.6's `ctr images pull` + `ctr run` with its
overlayfs snapshotter (on a temporary root). Images: the Debian root, and a GPU-style
image (python3, torch with its CUDA wheels, numpy, pandas; its start-up imports them)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

from bench_common import (RUNS, THAW, ROOTFS, WORK, sh, timed, drop_caches, fresh, med)

THROTTLE = os.environ.get("THAW_BENCH_THROTTLE", "20,1000")
LAYOUTS = os.environ.get("THAW_BENCH_LAYOUTS", "/var/cache/thaw/bench-layouts")
# What each image's container runs: the Debian one asks apt for its version (it reads
# apt's binaries and libraries), the GPU-style one imports torch, numpy and pandas.
IMAGES = {
    "debian": ("ROOTFS", ["/bin/sh", "-c", "apt-get --version | head -n1"]),
    "gpu-style": ("THAW_GPU_ROOTFS", ["/usr/local/bin/start"]),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def layout_for(name, rootfs, cmd):
    """An OCI layout of `rootfs` (one layer) with `cmd` as its command, made once."""
    layout = f"{LAYOUTS}/{name}"
    if os.path.exists(f"{layout}/.complete"):
        return layout
    print(f"  making the OCI layout of {name} (once)", file=sys.stderr)
    shutil.rmtree(layout, ignore_errors=True)
    bundle = f"{LAYOUTS}/{name}.bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    os.makedirs(LAYOUTS, exist_ok=True)
    sh(f"umoci init --layout {layout} && umoci new --image {layout}:img && umoci unpack --image {layout}:img {bundle}")
    sh(f"cp -a {rootfs}/. {bundle}/rootfs/")
    sh(f"umoci repack --image {layout}:img {bundle}")
    args = " ".join(f"--config.cmd '{a}'" for a in cmd)
    sh(f"umoci config --image {layout}:img {args}")
    shutil.rmtree(bundle, ignore_errors=True)
    open(f"{layout}/.complete", "w").close()
    return layout


class Registry:
    """Debian's docker-registry on a free loopback port."""

    def __init__(self, root):
        self.addr = f"127.0.0.1:{free_port()}"
        os.makedirs(root, exist_ok=True)
        config = f"{root}/registry.yml"
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                    f"http:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(tuple(self.addr.split(":")), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Containerd:
    """containerd on a temporary root, state and socket (never the host's)."""

    def __init__(self, root):
        fresh(root)
        os.makedirs(root)
        self.sock = f"{root}/containerd.sock"
        config = f"{root}/config.toml"
        with open(config, "w") as f:
            f.write(f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{self.sock}"\n')
        self.proc = subprocess.Popen(["containerd", "--config", config], stdout=subprocess.DEVNULL,
                                     stderr=open(f"{root}.log", "w"))
        deadline = time.time() + 30
        while not os.path.exists(self.sock):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"containerd did not start: see {root}.log")
            time.sleep(0.02)

    def ctr(self, args):
        return f"ctr --address {self.sock} --namespace bench {args}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def run_quiet(cmd):
    """Runs a shell command; returns (seconds, stdout, stderr). Fails loudly."""
    start = time.perf_counter()
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    took = time.perf_counter() - start
    if p.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {p.returncode}: {p.stderr[-2000:]}")
    return took, p.stdout, p.stderr


def expect(out, want, what):
    if want not in out:
        raise RuntimeError(f"{what}: expected {want!r} in the output, got {out[-500:]!r}")


def thaw_conversion(ref, store):
    fresh(store)
    drop_caches()
    took, _, _ = run_quiet(f"{THAW} --store {store} build docker://{ref} --tag bench")
    return took


def thaw_start(store, work, want, throttle=None):
    cache = f"{work}/cache"
    fresh(cache)
    drop_caches()
    extra = f"--throttle {throttle}" if throttle else ""
    took, out, err = run_quiet(f"{THAW} --store {store} {extra} run --cache {cache} "
                               f"--state-dir {work}/containers --timings bench </dev/null")
    expect(out, want, "thaw run")
    steps = {l.split(":")[0].removeprefix("timing "): l.split(":", 1)[1].strip()
             for l in err.splitlines() if l.startswith("timing ")}
    return took, steps


def skopeo_umoci_runc(ref, work, i, want):
    d = f"{work}/pull"
    fresh(d)
    os.makedirs(d)
    drop_caches()
    patch = ("python3 -c \"import json,sys; p=sys.argv[1]; c=json.load(open(p)); "
             "c['process']['terminal']=False; json.dump(c, open(p,'w'))\"")
    took, out, _ = run_quiet(
        f"skopeo copy --quiet --src-tls-verify=false docker://{ref} oci:{d}/layout:img && "
        f"umoci unpack --image {d}/layout:img {d}/bundle >/dev/null && {patch} {d}/bundle/config.json && "
        f"runc --root {d}/runc run --bundle {d}/bundle pull{i} </dev/null")
    expect(out, want, "skopeo + umoci + runc")
    shutil.rmtree(d, ignore_errors=True)
    return took


def ctr_pull_run(ref, work, i, want):
    c = Containerd(f"{work}/containerd")
    try:
        drop_caches()
        took, out, _ = run_quiet(f"{c.ctr(f'images pull --plain-http {ref}')} >/dev/null && "
                                 f"{c.ctr(f'run --rm --snapshotter overlayfs {ref} ctr{i}')} </dev/null")
        expect(out, want, "ctr pull + run")
    finally:
        c.stop()
        sh(f"umount -R {work}/containerd/root 2>/dev/null || true; rm -rf {work}/containerd")
    return took


def run_start(names=("debian", "gpu-style")):
    """Per image: the conversion, thaw run cold (unthrottled and throttled), both full
    pulls; medians over RUNS (the GPU-style image: at most 3)."""
    results = {}
    registry = Registry(f"{WORK}/registry")
    try:
        for name in names:
            var, cmd = IMAGES[name]
            rootfs = os.environ.get(var) or (ROOTFS if var == "ROOTFS" else None)
            if not rootfs:
                print(f"  skipping {name}: ${var} is not set", file=sys.stderr)
                continue
            want = "apt " if name == "debian" else "imported torch"
            layout = layout_for(name, rootfs, cmd)
            ref = f"{registry.addr}/bench/{name}:v1"
            sh(f"skopeo copy --quiet --dest-tls-verify=false oci:{layout}:img docker://{ref}")
            runs = RUNS if name == "debian" else min(RUNS, 3)
            work = f"{WORK}/run-{name}"
            store = f"{work}/store"
            r = {"image_bytes": int(sh(f"du -sb {rootfs}").split()[0]), "runs": runs}
            r["conversion"] = [thaw_conversion(ref, store) for _ in range(runs)]
            starts = [thaw_start(store, work, want) for _ in range(runs)]
            r["thaw_run"] = [t for t, _ in starts]
            r["thaw_steps"] = [s for _, s in starts]
            r["thaw_run_throttled"] = [thaw_start(store, work, want, THROTTLE)[0] for _ in range(runs)]
            r["skopeo_umoci_runc"] = [skopeo_umoci_runc(ref, work, i, want) for i in range(runs)]
            r["ctr"] = [ctr_pull_run(ref, work, i, want) for i in range(runs)]
            results[name] = r
            print(f"  {name}: " + json.dumps({k: v for k, v in r.items() if k != 'thaw_steps'}), file=sys.stderr)
    finally:
        registry.stop()
    return results


def markdown(results):
    lines = ["## thaw run: from a registry image to the container's output (issue 11)", ""]
    w = lines.append
    w("Everything on loopback and unthrottled unless marked: Debian's `docker-registry` serves the image "
      "(one gzip layer, made by `umoci`); each start begins with the page cache dropped and, for thaw, an "
      "empty node cache (`--cache` in a fresh directory). `thaw run` reads the thaw store the conversion made "
      "(a local directory); the full pulls read the registry. Times are wall-clock seconds to the container's "
      f"exit, medians; the throttled row adds {THROTTLE} (ms, Mbit/s) to every store request.")
    w("")
    w("| image | size | thaw build (conversion) | thaw run, cold | thaw run, cold, throttled | skopeo+umoci+runc | ctr pull+run | thaw run ÷ faster full pull |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        faster = min(med(r["skopeo_umoci_runc"]), med(r["ctr"]))
        w(f"| {name} ({r['runs']} runs) | {r['image_bytes'] / 1e9:.2f} GB | {med(r['conversion']):.2f} | "
          f"{med(r['thaw_run']):.2f} | {med(r['thaw_run_throttled']):.2f} | {med(r['skopeo_umoci_runc']):.2f} | "
          f"{med(r['ctr']):.2f} | {med(r['thaw_run']) / faster:.3f} |")
    w("")
    for name, r in results.items():
        steps = r["thaw_steps"][len(r["thaw_steps"]) // 2]
        w(f"`thaw run --timings` of {name} (the middle run by order, its own report): " +
          ", ".join(f"{k} {v}" for k, v in steps.items()) + ".")
        w("")
    w("Reproduce: `THAW_BENCH_ONLY=run RUNS=5 scripts/bench.sh` (GPU-style image: `scripts/gpu_image.sh`, "
      "section `run_start` in `scripts/bench_run.py`).")
    w("")
    return "\n".join(lines)
