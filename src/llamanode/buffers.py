"""Large state buffers without needless copies: a bytes object filled in place, and a file read that
hashes what it has read while the next part is still being read."""

from __future__ import annotations

import ctypes
import hashlib
import queue
import threading
from typing import BinaryIO

from .errors import SnapshotCorruptError

__all__ = ["fresh_bytes", "read_hashed"]

READ_CHUNK = 8 << 20  # bytes per read; hashing one chunk overlaps reading the next

_bytes_from_string_and_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_from_string_and_size.restype = ctypes.py_object
_bytes_from_string_and_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def fresh_bytes(n: int) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """A new bytes object of n uninitialised bytes and a writable ctypes view of its storage.

    This is the C API's way to build a bytes object (PyBytes_FromStringAndSize(NULL, n), then fill):
    no zero-fill and no copy afterwards. The caller must fill all n bytes before sharing the object.
    """
    if n <= 0:
        raise ValueError(f"fresh_bytes needs a positive size, got {n}")
    data = _bytes_from_string_and_size(None, n)
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    view = (ctypes.c_char * n).from_address(address)  # type: ignore[arg-type]
    view._keepalive = data  # type: ignore[attr-defined]  # the view never outlives the bytes it points at
    return data, view


def read_hashed(f: BinaryIO, n: int, digest: hashlib._Hash) -> bytes:
    """Exactly n bytes from f's current position, fed to digest in order; reading and hashing overlap
    (both release the GIL). Raises SnapshotCorruptError if the file ends early."""
    if n == 0:
        return b""
    data, view = fresh_bytes(n)
    target = memoryview(view).cast("B")
    parts: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    hasher = threading.Thread(target=_hash_parts, args=(parts, digest), name="llamanode-read-hash", daemon=True)
    hasher.start()
    try:
        for start in range(0, n, READ_CHUNK):
            part = target[start : start + READ_CHUNK]
            _read_into(f, part, start, n)
            parts.put(part)
    finally:
        parts.put(None)
        hasher.join()
    return data


def _hash_parts(parts: queue.SimpleQueue[memoryview | None], digest: hashlib._Hash) -> None:
    while (part := parts.get()) is not None:
        digest.update(part)


def _read_into(f: BinaryIO, part: memoryview, start: int, n: int) -> None:
    done = 0
    while done < len(part):
        got = f.readinto(part[done:])  # type: ignore[attr-defined]
        if not got:
            raise SnapshotCorruptError(f"snapshot truncated: wanted {n} bytes, read {start + done}")
        done += got
