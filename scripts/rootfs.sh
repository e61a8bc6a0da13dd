#!/usr/bin/env bash
# Makes (once) and caches the Debian bookworm minbase root filesystems the tests and
# benchmarks use, then prints their paths:
#   $CACHE/bookworm-minbase       debootstrap --variant=minbase bookworm
#   $CACHE/bookworm-minbase-plus  the same tree with one extra package installed
# The mirror is the one apt on this machine already uses.
set -euo pipefail
CACHE=${THAW_ROOTFS_CACHE:-/var/cache/thaw}
EXTRA_PKG=${THAW_EXTRA_PKG:-vim-runtime}
BASE=$CACHE/bookworm-minbase
PLUS=$CACHE/bookworm-minbase-plus
mkdir -p "$CACHE"

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need debootstrap debootstrap

mirror() {
  local m
  m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'NR==1 {print $2}')
  [ -n "$m" ] || m=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk 'NR==1 {print $2}')
  [ -n "$m" ] || { echo "rootfs.sh: no Debian mirror configured for apt" >&2; exit 1; }
  echo "$m"
}

if [ ! -f "$BASE/.thaw-complete" ]; then
  rm -rf "$BASE.tmp"
  echo "rootfs.sh: debootstrap bookworm minbase into $BASE (once)" >&2
  debootstrap --variant=minbase bookworm "$BASE.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Sockets and the like cannot appear in a fresh debootstrap; nothing else to fix up.
  touch "$BASE.tmp/.thaw-complete"
  rm -rf "$BASE"; mv "$BASE.tmp" "$BASE"
fi

if [ ! -f "$PLUS/.thaw-complete" ]; then
  rm -rf "$PLUS.tmp"
  cp -a "$BASE" "$PLUS.tmp"
  rm -f "$PLUS.tmp/.thaw-complete"
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download "$EXTRA_PKG" >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$debs" && apt-get download "$EXTRA_PKG" >/dev/null); }
  cp "$debs"/*.deb "$PLUS.tmp/tmp/"
  chroot "$PLUS.tmp" sh -c 'dpkg -i /tmp/*.deb >/dev/null && rm -f /tmp/*.deb'
  rm -rf "$debs"
  echo "$EXTRA_PKG" > "$PLUS.tmp/.thaw-extra-package"
  touch "$PLUS.tmp/.thaw-complete"
  rm -rf "$PLUS"; mv "$PLUS.tmp" "$PLUS"
fi
echo "$BASE"
echo "$PLUS"
