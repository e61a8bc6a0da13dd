#!/usr/bin/env bash
# Makes (once) and caches a realistic GPU-style root filesystem for the benchmarks, then
# prints its path: Debian bookworm minbase with python3 and a virtual environment holding
# torch (with its CUDA wheels), numpy and pandas, and a start-up command that imports
# them (CUDA libraries load without a GPU). Several GB; built once under $CACHE.
#   $CACHE/gpu-style
set -euo pipefail
CACHE=${THAW_ROOTFS_CACHE:-/var/cache/thaw}
OUT=$CACHE/gpu-style
PYPKGS=${THAW_GPU_PKGS:-"torch numpy pandas"}
if [ -f "$OUT/.thaw-complete" ]; then echo "$OUT"; exit 0; fi
BASE=$(THAW_ROOTFS_CACHE=$CACHE "$(dirname "$0")/rootfs.sh" | sed -n 1p)
rm -rf "$OUT.tmp"; cp -a "$BASE" "$OUT.tmp"
rm -f "$OUT.tmp/.thaw-complete"
# The image's apt uses the mirror this machine's apt uses.
cp /etc/apt/sources.list.d/*.sources "$OUT.tmp/etc/apt/sources.list.d/" 2>/dev/null || true
rm -f "$OUT.tmp/etc/apt/sources.list"
cp /etc/resolv.conf "$OUT.tmp/etc/resolv.conf"
echo "gpu_image.sh: installing python3 into $OUT.tmp (once)" >&2
mount --bind /dev "$OUT.tmp/dev"; mount -t proc proc "$OUT.tmp/proc"
trap 'umount "$OUT.tmp/proc" "$OUT.tmp/dev" 2>/dev/null || true' EXIT
chroot "$OUT.tmp" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*'
# Wheels are fetched by this machine's pip (its index and certificates), for the image's
# CPython 3.11, then installed offline inside the image.
wheels=$CACHE/gpu-wheels
mkdir -p "$wheels"
echo "gpu_image.sh: downloading $PYPKGS wheels into $wheels (once)" >&2
python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" $PYPKGS
mkdir -p "$OUT.tmp/wheels"; mount --bind "$wheels" "$OUT.tmp/wheels"
trap 'umount "$OUT.tmp/wheels" "$OUT.tmp/proc" "$OUT.tmp/dev" 2>/dev/null || true' EXIT
chroot "$OUT.tmp" sh -c "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links /wheels $PYPKGS"
umount "$OUT.tmp/wheels" "$OUT.tmp/proc" "$OUT.tmp/dev"; rmdir "$OUT.tmp/wheels"
trap - EXIT
cat > "$OUT.tmp/usr/local/bin/start" <<'PY'
#!/opt/venv/bin/python
# A serving process's start-up: import the framework, as a model server would first.
import time
t = time.time()
import numpy, pandas, torch
print(f"imported torch {torch.__version__} numpy {numpy.__version__} pandas {pandas.__version__} "
      f"cuda_available={torch.cuda.is_available()} in {time.time() - t:.2f}s", flush=True)
PY
chmod 755 "$OUT.tmp/usr/local/bin/start"
touch "$OUT.tmp/.thaw-complete"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "$OUT"
