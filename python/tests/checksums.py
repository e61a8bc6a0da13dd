"""Prints `NAME BLAKE3HEX` per tensor of a safetensors file, in data order: what
`thaw weights load --checksums` must print, computed independently (needs `blake3`)."""

import json
import struct
import sys

import blake3

with open(sys.argv[1], "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
tensors = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
for (lo, hi), name in tensors:
    print(name, blake3.blake3(data[lo:hi]).hexdigest())
