"""Weights from a thaw node daemon, without a copy.

The daemon (``thaw serve --resident-weights SIZE --weights-socket PATH``) keeps model
weights decompressed and verified in sealed shared memory (memfd). ``load`` asks it for a
safetensors file (or a sharded checkpoint's ``*.index.json``) of an image, receives one
memfd per file over the unix socket (SCM_RIGHTS), maps it, and returns the tensors as
views of that mapping:

- PyTorch CPU tensors where torch is installed (``torch.frombuffer``), else NumPy arrays
  (bf16 and 8-bit floats, which NumPy lacks, come as ``uint16``/``uint8`` views);
- with ``device="cuda:N"`` the mapping is registered as pinned memory
  (``cudaHostRegister``) and each tensor is copied to the GPU at the link's speed.

The mapping lives as long as any tensor made from it (each view holds a reference to it).
Only the standard library is required.
"""

import array
import json
import mmap
import os
import socket

__all__ = ["load", "request", "Handoff"]

_MAX_FDS = 253
_DTYPES = {
    # safetensors dtype: (numpy dtype, torch dtype name, item size)
    "BOOL": ("bool", "bool", 1),
    "U8": ("uint8", "uint8", 1),
    "I8": ("int8", "int8", 1),
    "F8_E5M2": ("uint8", "float8_e5m2", 1),
    "F8_E4M3": ("uint8", "float8_e4m3fn", 1),
    "I16": ("int16", "int16", 2),
    "U16": ("uint16", "uint16", 2),
    "F16": ("float16", "float16", 2),
    "BF16": ("uint16", "bfloat16", 2),
    "I32": ("int32", "int32", 4),
    "U32": ("uint32", "uint32", 4),
    "F32": ("float32", "float32", 4),
    "F64": ("float64", "float64", 8),
    "I64": ("int64", "int64", 8),
    "U64": ("uint64", "uint64", 8),
}


class Handoff:
    """One answer of the daemon: per file its header, tensors and mapped memory."""

    def __init__(self, reply, fds):
        self.image = reply.get("image")
        self.files = reply["files"]
        self.maps = []
        try:
            for f, fd in zip(self.files, fds):
                # Private and writable: copy-on-write pages, so views are writable for
                # frameworks that insist, while the sealed memfd stays as it is for all.
                size = f["len"]
                m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE) if size else b""
                if size and hasattr(mmap, "MADV_HUGEPAGE"):
                    # Huge pages where the node allows them for shared memory
                    # (shmem_enabled = advise): 512 times fewer faults and TLB misses.
                    try:
                        m.madvise(mmap.MADV_HUGEPAGE)
                    except OSError:
                        pass
                self.maps.append(m)
        finally:
            for fd in fds:
                os.close(fd)

    def tensors(self):
        """(name, dtype, shape, memoryview of its bytes) for every tensor."""
        for f, m in zip(self.files, self.maps):
            view = memoryview(m)
            for t in f["tensors"]:
                yield t["name"], t["dtype"], t["shape"], view[t["offset"]:t["offset"] + t["len"]]


def request(socket_path, image, path, timeout=600.0):
    """Asks the daemon at ``socket_path`` for ``path`` of ``image``; returns a Handoff."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(socket_path)
        s.sendall(json.dumps({"image": image, "path": path}).encode() + b"\n")
        fds = array.array("i")
        data, ancdata, _, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        chunks = [data]
        while not chunks[-1].endswith(b"\n"):
            more = s.recv(1 << 20)
            if not more:
                break
            chunks.append(more)
    finally:
        s.close()
    reply = json.loads(b"".join(chunks))
    if not reply.get("ok"):
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"thaw: {reply.get('error')}")
    return Handoff(reply, list(fds))


def _numpy(dtype, shape, buf):
    import numpy as np
    np_dtype = _DTYPES[dtype][0]
    return np.frombuffer(buf, dtype=np_dtype).reshape(shape)


def _torch(torch, dtype, shape, buf):
    t_dtype = getattr(torch, _DTYPES[dtype][1])
    if len(buf) == 0:
        return torch.empty(shape, dtype=t_dtype)
    return torch.frombuffer(buf, dtype=t_dtype).reshape(shape)


def load(socket_path, image, path, device=None, framework=None):
    """The tensors of ``path`` in ``image``: a dict of name to tensor.

    ``framework`` is "torch" or "numpy" (default: torch where it is installed). With
    ``device="cuda:N"`` (torch only) the tensors are copied to that GPU from the mapping,
    registered as pinned memory for the copy.
    """
    handoff = request(socket_path, image, path)
    torch = None
    if framework in (None, "torch"):
        try:
            import torch
        except ImportError:
            if framework == "torch":
                raise
    out = {}
    for name, dtype, shape, buf in handoff.tensors():
        if dtype not in _DTYPES:
            raise ValueError(f"thaw: tensor {name} has dtype {dtype}, not supported here")
        out[name] = _torch(torch, dtype, shape, buf) if torch else _numpy(dtype, shape, buf)
    if device is not None and str(device) != "cpu":
        if torch is None:
            raise ValueError("thaw: a GPU device needs torch")
        out = _to_device(torch, handoff, out, device)
    return out


def _to_device(torch, handoff, tensors, device):
    """Pins each mapping (cudaHostRegister) and copies the tensors to ``device``."""
    import ctypes
    cudart = torch.cuda.cudart()
    registered = []
    for m in handoff.maps:
        if len(m):
            ptr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            if cudart.cudaHostRegister(ptr, len(m), 0) == 0:
                registered.append(ptr)
    try:
        moved = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
        torch.cuda.synchronize(device)
    finally:
        for ptr in registered:
            cudart.cudaHostUnregister(ptr)
    return moved
