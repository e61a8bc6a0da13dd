"""Issue 15 benchmark, in the manner of stargz's hello-bench: pull + create + run to a
ready line through containerd, from a cold node, with thaw's snapshotter (a lazy pull,
`ctr-remote images rpull`) against containerd's overlayfs snapshotter with a full pull
(`ctr images pull`), both from the same loopback registry. Before each timed run
containerd (and thaw) are restarted on fresh roots, thaw's cache is emptied and the page
cache dropped. The Debian image, and the machine-learning image of the `thaw run`
benchmark when THAW_GPU_ROOTFS names it (its start-up imports torch, numpy and pandas)."""

import os
import signal
import socket
import subprocess
import time

from bench_common import RUNS, THAW, ROOTFS, WORK, sh, drop_caches, fresh, med

# Each image: a label, its tree, and the command that prints the ready line.
IMAGES = [("Debian minbase", ROOTFS, "apt-get --version >/dev/null && dpkg -l >/dev/null && echo ready")]
if os.environ.get("THAW_GPU_ROOTFS"):
    IMAGES.append(("machine-learning image", os.environ["THAW_GPU_ROOTFS"],
                   "/usr/local/bin/start >/dev/null && echo ready"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(check, what, timeout=60):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def oci_layout(name, tree):
    """`tree` as a one-layer OCI image, made once with umoci."""
    layout = f"{WORK}/ctd-{name}-layout"
    if not os.path.exists(f"{layout}/.complete"):
        fresh(layout)
        bundle = f"{WORK}/ctd-{name}-bundle"
        fresh(bundle)
        sh(f"umoci init --layout {layout} && umoci new --image {layout}:{name} "
           f"&& umoci unpack --image {layout}:{name} {bundle}")
        sh(f"tar -C {tree} -cf - . | tar -C {bundle}/rootfs -xf -")
        sh(f"umoci repack --image {layout}:{name} {bundle} && rm -rf {bundle}")
        sh(f"touch {layout}/.complete")
    return layout


class Registry:
    def __init__(self):
        self.dir = f"{WORK}/ctd-registry"
        fresh(self.dir)
        os.makedirs(self.dir)
        self.addr = f"127.0.0.1:{free_port()}"
        with open(f"{self.dir}/config.yml", "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {self.dir}/data\nhttp:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", f"{self.dir}/config.yml"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        host, port = self.addr.split(":")
        wait_for(lambda: socket.socket().connect_ex((host, int(port))) == 0, "the registry")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Node:
    """containerd on a fresh root, and, for thaw's rows, `thaw serve` with its snapshotter."""

    def __init__(self, store, with_thaw):
        self.dir = f"{WORK}/ctd-node"
        sh(f"for m in $(grep -o ' {self.dir}[^ ]*' /proc/self/mounts | sort -r); do umount -l $m; done; true")
        fresh(self.dir)
        os.makedirs(self.dir)
        self.snap_socket = f"{self.dir}/snapshotter.sock"
        self.thaw = None
        if with_thaw:
            self.thaw = subprocess.Popen(
                [THAW, "--store", store, "serve", "--socket", f"{self.dir}/thaw.sock",
                 "--state-dir", f"{self.dir}/thaw-state", "--mount-root", f"{self.dir}/thaw-mnt",
                 "--cache", f"{self.dir}/thaw-cache", "--snapshotter-socket", self.snap_socket,
                 "--snapshotter-root", f"{self.dir}/snapshotter"],
                stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/thaw.log", "w"))
            wait_for(lambda: os.path.exists(self.snap_socket), "thaw serve")
        self.address = f"{self.dir}/containerd.sock"
        with open(f"{self.dir}/config.toml", "w") as f:
            f.write(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                    f'[grpc]\n  address = "{self.address}"\n'
                    f'[proxy_plugins]\n  [proxy_plugins.thaw]\n    type = "snapshot"\n'
                    f'    address = "{self.snap_socket}"\n')
        self.containerd = subprocess.Popen(["containerd", "--config", f"{self.dir}/config.toml"],
                                           stdout=subprocess.DEVNULL,
                                           stderr=open(f"{self.dir}/containerd.log", "w"))
        wait_for(lambda: subprocess.run(["ctr", "--address", self.address, "version"],
                                        capture_output=True).returncode == 0, "containerd")

    def ctr(self, tool, args):
        return sh(f"{tool} --address {self.address} {args}")

    def stop(self):
        for p in (self.containerd, self.thaw):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        sh(f"pkill -9 -f '[c]ontainerd-shim-runc-v2 .*-address {self.address}'; true")
        sh(f"for m in $(grep -o ' {self.dir}[^ ]*' /proc/self/mounts | sort -r); do umount -l $m; done; true")


def one_run(store, image, ready, lazy):
    node = Node(store, with_thaw=lazy)
    try:
        drop_caches()
        runc_root = f"{node.dir}/runc"
        start = time.perf_counter()
        if lazy:
            node.ctr("ctr-remote", f"images rpull --plain-http --snapshotter thaw {image}")
            flags = "--snapshotter thaw"
        else:
            node.ctr("ctr", f"images pull --plain-http {image}")
            flags = ""
        out = node.ctr("ctr", f"run --rm --runc-root {runc_root} {flags} {image} bench "
                              f"sh -c '{ready}'")
        took = time.perf_counter() - start
        assert out.strip().endswith("ready"), out
        return took
    finally:
        node.stop()


def containerd_rows():
    """Per image: its label, and the lazy and full pulls' seconds, alternating."""
    registry = Registry()
    rows = []
    try:
        for i, (label, tree, ready) in enumerate(IMAGES):
            name = f"img{i}"
            layout = oci_layout(name, tree)
            image = f"{registry.addr}/thaw/{name}:bench"
            sh(f"skopeo copy --quiet --dest-tls-verify=false oci:{layout}:{name} docker://{image}")
            store = f"{WORK}/ctd-store-{name}"
            fresh(store)
            sh(f"{THAW} --store {store} build --containerd docker://{image}")
            lazy, full = [], []
            for _ in range(RUNS):
                lazy.append(one_run(store, image, ready, lazy=True))
                full.append(one_run(store, image, ready, lazy=False))
            rows.append((label, lazy, full))
        return rows
    finally:
        registry.stop()


def markdown(rows):
    out = ["| pull + create + run to a ready line | median s | / full pull | runs s |",
           "|---|---:|---:|---|"]
    for image, lazy, full in rows:
        for label, xs in ((f"{image}: thaw snapshotter, lazy pull (`ctr-remote images rpull`)", lazy),
                          (f"{image}: overlayfs snapshotter, full pull (`ctr images pull`)", full)):
            out.append(f"| {label} | {med(xs):.3f} | {med(xs) / med(full):.2f} | "
                       f"{', '.join(f'{x:.2f}' for x in xs)} |")
    return "\n".join(out)
