#!/usr/bin/env bash
# The main job on the embedded local store: build a real Debian root filesystem into
# content-addressed chunks, inspect it, export it back and check it is identical,
# rebuild to show dedup, and list what garbage collection would remove.
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
if SRC=$(scripts/rootfs.sh 2>"$WORK/rootfs.log" | head -n1) && [ -d "$SRC" ]; then
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

step "checking the export against the source (diff -r, plus owners, modes and mtimes)"
diff -r --no-dereference "$SRC" "$WORK/export" && echo "contents: identical"
if [ "$(cd "$SRC" && find . -printf '%p %M %U:%G %T@ %l\n' | sort | md5sum)" = \
     "$(cd "$WORK/export" && find . -printf '%p %M %U:%G %T@ %l\n' | sort | md5sum)" ]; then
  echo "metadata: identical"
else
  echo "metadata: DIFFERENT" >&2; exit 1
fi

step "building the same tree again: everything is deduplicated"
$THAW build "$SRC" --tag demo:again | grep -E 'image|bytes_stored|chunks'

step "thaw gc (dry run)"
$THAW gc

echo
echo "store: $STORE   scratch: $WORK (remove it when done)"
