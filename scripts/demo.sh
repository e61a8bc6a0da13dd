#!/usr/bin/env bash
# The main job on the embedded local store: build a real Debian root filesystem into
# content-addressed chunks, inspect it, export it back and check it is identical,
# mount it lazily and run programs from it (recording their start-up trace), run it as
# containers under runc with its own configuration, warm a node
# daemon's cache from that trace, rebuild to show dedup, list what garbage collection
# would remove, run it under containerd with thaw as the snapshotter (a lazy pull next to
# containerd's full pull), and end with the autoscaler: a burst of queued work scaled from zero to
# several lazily started replicas, the cold starts it measured, the daemon killed and
# restarted (it adopts the running replicas and their mounts), a second burst on the
# adopted replicas, and back to zero.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${THAW_STORE:-./thaw-data}
WORK=${THAW_DEMO_DIR:-$(mktemp -d /tmp/thaw-demo.XXXXXX)}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v cargo >/dev/null || { echo "demo.sh: needs a Rust toolchain (cargo)" >&2; exit 1; }
step "building thaw (release)"
cargo build --release -q -p thaw-cli
THAW="$PWD/target/release/thaw --store $STORE"

step "preparing a Debian bookworm minbase root filesystem (cached after the first run)"
if SRC=$(scripts/rootfs.sh 2>"$WORK/rootfs.log" | sed -n 1p) && [ -d "$SRC" ]; then
  echo "source: $SRC"
else
  SRC=/usr/share
  echo "debootstrap unavailable ($(tail -n1 "$WORK/rootfs.log")); using $SRC instead"
fi

step "thaw build $SRC --tag demo:rootfs"
$THAW build "$SRC" --tag demo:rootfs

step "thaw images"
$THAW images

step "thaw inspect demo:rootfs"
$THAW inspect demo:rootfs

step "thaw export demo:rootfs $WORK/export"
$THAW export demo:rootfs "$WORK/export"

step "checking the export against the source: contents, devices, and metadata"
tree_sig() { # $1: tree, $2: what to list
  (cd "$1" && case "$2" in
    contents) find . -type f -print0 | sort -z | xargs -0 -r sha256sum ;;
    devices)  find . \( -type c -o -type b \) -exec stat -c '%n %F %t:%T' {} + | sort ;;
    metadata) find . -printf '%p %M %U:%G %T@ %l\n' | sort ;;
  esac) | sha256sum
}
for what in contents devices metadata; do
  if [ "$(tree_sig "$SRC" $what)" = "$(tree_sig "$WORK/export" $what)" ]; then
    echo "$what: identical"
  else
    echo "$what: DIFFERENT" >&2; exit 1
  fi
done

if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  step "thaw mount demo:rootfs (lazy), then programs from it in a chroot, as a runtime would run them"
  mkdir -p "$WORK/mnt"
  $THAW mount demo:rootfs "$WORK/mnt" --status-file "$WORK/mount.status" \
    --record-trace "$WORK/startup.trace" 2>"$WORK/mount.log" &
  for _ in $(seq 1 200); do grep -q " $WORK/mnt " /proc/self/mountinfo && break; sleep 0.05; done
  unshare -m sh -c "mount --bind /dev $WORK/mnt/dev && mount -t proc proc $WORK/mnt/proc && \
    chroot $WORK/mnt /bin/bash -c 'apt-get --version | head -n1; echo \"installed packages: \$(dpkg -l | grep -c ^ii)\"'"
  sleep 1.2
  echo "of the image's $(du -sb "$SRC" | cut -f1) bytes, the programs read and thaw fetched:"
  grep -E '^(bytes_served|fetched_bytes|fetched_chunks):' "$WORK/mount.status"
  "$PWD/target/release/thaw" umount "$WORK/mnt"
  wait
  step "thaw trace push: the start-up trace just recorded becomes the image's prefetch list"
  $THAW trace push demo:rootfs "$WORK/startup.trace"
  SCOPE=trace

  if command -v runc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq runc golang-github-containers-common >/dev/null; }; then
    step "thaw run: containers under runc from the lazily mounted image, with the image's configuration"
    # The same tree with a run configuration: only a new manifest is stored.
    $THAW build "$SRC" --tag demo:app --workdir /tmp --user nobody \
      --cmd '["/bin/sh","-c","echo \"hello from $(hostname), running as $(id -un) in $(pwd)\""]' | grep -E '^(image|bytes_stored)'
    $THAW inspect demo:app | sed -n '/^config:/,$p'
    export THAW_CONTAINERS_DIR=$WORK/containers THAW_RUN_DIR=$WORK/run
    $THAW run --name demo demo:app --timings
    set +e; $THAW run --memory 64m --user 0 demo:app -- sh -c 'echo "a write stays in this container" > /etc/motd; exit 3'; code=$?; set -e
    echo "exit code passed through: $code"
    $THAW run demo:app -- sh -c 'echo "the next container sees the image unchanged: $(cat /etc/motd | wc -c) bytes in /etc/motd"'
    RUN_DETACHED=1
  fi
else
  step "skipping the lazy mount: it needs root and /dev/fuse"
  SCOPE=all
fi

step "model weights: a safetensors file built into the store, then thaw weights load (parallel decode into staging slots; host memory here, --device cuda:N on a GPU)"
mkdir -p "$WORK/weights-src"
python3 - "$WORK/weights-src/model.safetensors" <<'PY'
import json, random, struct, sys
random.seed(7)
tensors, off, blobs = {}, 0, []
for i, (dtype, shape, size) in enumerate([("BF16", [1024, 2048], 2), ("F32", [2048], 4), ("BF16", [2048, 1024], 2)]):
    n = size
    for d in shape:
        n *= d
    blobs.append(random.randbytes(n))
    tensors[f"layers.{i}.weight"] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
    off += n
h = json.dumps(tensors).encode()
h += b" " * (-len(h) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
$THAW build "$WORK/weights-src" --tag demo:weights | grep -E '^image'
$THAW weights load demo:weights model.safetensors --device host --json | grep -E '"(bytes|seconds|gb_per_s|workers|tensors)"'

step "thaw serve (the node daemon, on a unix socket only its user can use), then thaw prewarm --scope $SCOPE and thaw cache stats"
$THAW serve --socket "$WORK/thaw.sock" --mount-root "$WORK/node-mnt" --cache "$WORK/node-cache" \
  --state-dir "$WORK/node-state" --ready-file "$WORK/node.addr" \
  --resident-weights 1000000000 --weights-socket "$WORK/weights.sock" 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 1 200); do [ -s "$WORK/node.addr" ] && break; sleep 0.05; done
SERVER="unix:$WORK/thaw.sock"
"$PWD/target/release/thaw" prewarm demo:rootfs --scope "$SCOPE" --server "$SERVER"
"$PWD/target/release/thaw" cache stats --server "$SERVER"
step "resident weights: thaw prewarm --weights keeps the model decompressed in sealed shared memory; a Python process receives it over the weights socket and maps it, no copy"
"$PWD/target/release/thaw" prewarm demo:weights --weights model.safetensors --server "$SERVER"
python3 - "$WORK/weights.sock" "$WORK/weights-src/model.safetensors" <<'PY'
import json, struct, sys
sys.path.insert(0, "python")
import thaw_torch
h = thaw_torch.request(sys.argv[1], "demo:weights", "model.safetensors")
raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
for name, dtype, shape, buf in h.tensors():
    lo, hi = header[name]["data_offsets"]
    assert bytes(buf) == data[lo:hi], name
    print(f"  {name:18} {dtype:5} {str(shape):14} mapped from the daemon's memfd, equal to the file")
PY
if [ -n "${RUN_DETACHED:-}" ]; then
  step "thaw run --detach: the daemon owns a container (through its shared cache); thaw ps, logs, stop, rm"
  CLIENT="$PWD/target/release/thaw"
  $CLIENT run --detach --server "$SERVER" --init --name served demo:app -- \
    sh -c 'echo "served by the daemon"; exec sleep 600'
  $CLIENT ps --server "$SERVER"
  for _ in $(seq 1 100); do $CLIENT logs --server "$SERVER" served | grep -q served && break; sleep 0.05; done
  $CLIENT logs --server "$SERVER" served
  $CLIENT stop --server "$SERVER" served
  $CLIENT rm --server "$SERVER" served
fi
kill "$SERVE_PID"; wait "$SERVE_PID" || true

step "building the same tree again: everything is deduplicated"
$THAW build "$SRC" --tag demo:again | grep -E 'image|bytes_stored|chunks'

step "thaw gc (dry run)"
$THAW gc

if [ -n "${RUN_DETACHED:-}" ] && { command -v ctr-remote >/dev/null || { apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd stargz-snapshotter umoci skopeo \
    docker-registry >/dev/null; }; }; then
  step "containerd: thaw as its snapshotter; a lazy pull downloads no layer, next to containerd's own full pull"
  scripts/demo_containerd.sh "$PWD/target/release/thaw" "$STORE" "$WORK" "$SRC"
else
  step "skipping containerd: it needs root, /dev/fuse, runc and Debian's containerd and stargz-snapshotter"
fi

if [ -n "${RUN_DETACHED:-}" ] && { command -v redis-server >/dev/null || { apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; }; then
  step "thaw autoscale: a burst of 24 queued tasks, scaled from zero to several replicas (containers started lazily from demo:rootfs); the daemon crashes and its successor adopts them; back to zero"
  scripts/demo_autoscale.sh "$PWD/target/release/thaw" "$STORE" "$WORK"
else
  step "skipping the autoscaler: it needs root, /dev/fuse, runc and redis-server"
fi

echo
echo "store: $STORE   scratch: $WORK (remove it when done)"
