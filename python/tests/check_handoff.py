"""Receives a model from a thaw daemon's weights socket and compares every tensor with the
source safetensors files, byte for byte (and, with NumPy, as arrays).

usage: check_handoff.py SOCKET IMAGE PATH SOURCE_FILE...
Prints "OK <files> files <tensors> tensors <bytes> bytes" and exits 0, or says what differs
and exits 1."""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import thaw_torch  # noqa: E402


def source_tensors(paths):
    """name -> (dtype, shape, bytes) from the files themselves."""
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            out[name] = (info["dtype"], info["shape"], data[lo:hi])
    return out


def main():
    sock, image, path, *sources = sys.argv[1:]
    want = source_tensors(sources)
    handoff = thaw_torch.request(sock, image, path)
    seen, total = 0, 0
    for name, dtype, shape, buf in handoff.tensors():
        if name not in want:
            sys.exit(f"unexpected tensor {name}")
        w_dtype, w_shape, w_bytes = want[name]
        if (dtype, list(shape)) != (w_dtype, list(w_shape)):
            sys.exit(f"{name}: {dtype} {shape}, the file says {w_dtype} {w_shape}")
        if bytes(buf) != w_bytes:
            sys.exit(f"{name}: the bytes differ")
        seen += 1
        total += len(buf)
    if seen != len(want):
        sys.exit(f"{seen} tensors handed over, the files hold {len(want)}")
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        arrays = thaw_torch.load(sock, image, path, framework="numpy")
        for name, (dtype, shape, data) in want.items():
            a = arrays[name]
            ref = np.frombuffer(data, dtype=a.dtype).reshape(shape)
            if a.shape != tuple(shape) or not np.array_equal(a.view(np.uint8), ref.view(np.uint8)):
                sys.exit(f"{name}: the array differs")
    print(f"OK {len(handoff.files)} files {seen} tensors {total} bytes numpy={np is not None}")


if __name__ == "__main__":
    main()
