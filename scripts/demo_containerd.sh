#!/usr/bin/env bash
# The demo's containerd act: the Debian tree pushed to a loopback registry as an OCI image,
# built into thaw by layer chain, pulled by containerd through thaw's snapshotter (no
# layer downloaded) and run, next to containerd's own full pull; then an image already in
# the store imported into containerd without a registry. Everything on temporary
# roots, sockets and ports. Usage: demo_containerd.sh THAW_BIN STORE WORK SRC
set -euo pipefail
BIN=$1 STORE=$2 WORK=$3 SRC=$4
D=$WORK/containerd-demo
mkdir -p "$D"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$D/registry" "$port" > "$D/registry.yml"
docker-registry serve "$D/registry.yml" >/dev/null 2>&1 & REG=$!
pids=("$REG")
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  pkill -9 -f "[c]ontainerd-shim-runc-v2 .*-address $D/containerd.sock" 2>/dev/null || true
  for m in $(grep -o " $D[^ ]*" /proc/self/mounts | sort -r); do umount -l "$m" || true; done
}
trap cleanup EXIT
until (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null; do sleep 0.1; done
IMAGE=127.0.0.1:$port/demo/debian:bookworm

echo "-- the Debian tree as a one-layer OCI image (umoci), pushed to a loopback registry (skopeo)"
umoci init --layout "$D/layout" && umoci new --image "$D/layout:debian"
umoci unpack --image "$D/layout:debian" "$D/bundle" >/dev/null
tar -C "$SRC" -cf - . | tar -C "$D/bundle/rootfs" -xf -
umoci repack --image "$D/layout:debian" "$D/bundle" && rm -rf "$D/bundle"
skopeo copy --quiet --dest-tls-verify=false "oci:$D/layout:debian" "docker://$IMAGE"

echo "-- thaw build --containerd docker://$IMAGE: every layer prefix tagged by its chain id"
"$BIN" --store "$STORE" build --containerd "docker://$IMAGE" | grep -E '^(image|layer|chain_tags)'

echo "-- thaw serve --snapshotter-socket, and containerd with [proxy_plugins.thaw]"
"$BIN" --store "$STORE" serve --socket "$D/thaw.sock" --state-dir "$D/thaw-state" \
  --mount-root "$D/thaw-mnt" --cache "$D/thaw-cache" \
  --snapshotter-socket "$D/snapshotter.sock" --snapshotter-root "$D/snapshotter" 2>"$D/thaw.log" & pids+=($!)
until [ -S "$D/snapshotter.sock" ]; do sleep 0.1; done
cat > "$D/containerd.toml" <<TOML
version = 2
root = "$D/containerd-root"
state = "$D/containerd-state"
[grpc]
  address = "$D/containerd.sock"
[proxy_plugins]
  [proxy_plugins.thaw]
    type = "snapshot"
    address = "$D/snapshotter.sock"
TOML
containerd --config "$D/containerd.toml" 2>"$D/containerd.log" & pids+=($!)
CTR="ctr --address $D/containerd.sock"
until $CTR version >/dev/null 2>&1; do sleep 0.1; done

sync; echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N)
ctr-remote --address "$D/containerd.sock" images rpull --plain-http --snapshotter thaw "$IMAGE" >/dev/null
$CTR run --rm --runc-root "$D/runc" --snapshotter thaw "$IMAGE" lazy \
  sh -c 'echo "in a container on thaw: $(apt-get --version | head -n1), $(dpkg -l | grep -c ^ii) packages"'
lazy=$(echo "$(date +%s.%N) - $start" | bc)
echo "-- containerd's content store after the lazy pull (manifest and config, no layer):"
$CTR content ls | awk 'NR > 1 {print "   " $1, $2}'

sync; echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N)
$CTR images pull --plain-http --snapshotter overlayfs "$IMAGE" >/dev/null
$CTR run --rm --runc-root "$D/runc" --snapshotter overlayfs "$IMAGE" full \
  sh -c 'echo "in a container on overlayfs after a full pull: $(dpkg -l | grep -c ^ii) packages"'
full=$(echo "$(date +%s.%N) - $start" | bc)
printf -- '-- pull + run: thaw snapshotter %.2f s, overlayfs with a full pull %.2f s (%.2fx)\n' \
  "$lazy" "$full" "$(echo "$lazy / $full" | bc -l)"

echo "-- thaw snapshotter import demo:rootfs: an image already in the store made known to containerd,"
echo "   with no registry and no layer download (a tree with no layers becomes one, thaw export --tar's)"
"$BIN" --store "$STORE" snapshotter import demo:rootfs --containerd-address "$D/containerd.sock" \
  --name thaw.local/demo:rootfs | grep -E '^(layers|containerd)'
$CTR run --rm --runc-root "$D/runc" --snapshotter thaw thaw.local/demo:rootfs imported \
  sh -c 'echo "in a container on the imported image: $(dpkg -l | grep -c ^ii) packages"'
