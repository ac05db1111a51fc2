"""buffers.py: bytes filled in place, and a chunked read whose hash overlaps the next read."""

from __future__ import annotations

import ctypes
import hashlib
import io
import os

import pytest

from llamanode import buffers
from llamanode.buffers import fresh_bytes, read_hashed
from llamanode.errors import SnapshotCorruptError


def test_fresh_bytes_is_a_new_bytes_object_written_through_its_view() -> None:
    data, view = fresh_bytes(5)
    ctypes.memmove(view, b"hello", 5)
    assert isinstance(data, bytes) and data == b"hello"
    other, _ = fresh_bytes(5)
    assert other is not data
    with pytest.raises(ValueError):
        fresh_bytes(0)


@pytest.mark.parametrize("size", [1, 1000, 3 * 1024 + 17])
def test_read_hashed_reads_exactly_and_hashes_in_order(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(buffers, "READ_CHUNK", 1024)  # many chunks, a partial last one
    payload = os.urandom(size)
    f = io.BytesIO(b"head" + payload + b"tail")
    f.seek(4)
    digest = hashlib.sha256(b"prefix")
    assert read_hashed(f, size, digest) == payload
    assert digest.hexdigest() == hashlib.sha256(b"prefix" + payload).hexdigest()
    assert f.read() == b"tail"


def test_read_hashed_refuses_a_short_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffers, "READ_CHUNK", 1024)
    with pytest.raises(SnapshotCorruptError, match="wanted 4000 bytes, read 2500"):
        read_hashed(io.BytesIO(os.urandom(2500)), 4000, hashlib.sha256())
    assert read_hashed(io.BytesIO(b""), 0, hashlib.sha256()) == b""
