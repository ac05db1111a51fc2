"""Common-prefix length: the one rule behind token reuse, divergence offsets, template seams and routing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["common_prefix_len"]

_T = TypeVar("_T")
_CHUNK = 256


def common_prefix_len(a: Sequence[_T], b: Sequence[_T]) -> int:
    """How many leading items a and b share (token ids, bytes or text).

    Written by hand because nothing in the standard library returns the length at C speed: whole
    chunks are compared as slices, and only the chunk that differs is walked item by item.
    """
    n = min(len(a), len(b))
    at = 0
    while at < n:
        end = min(at + _CHUNK, n)
        if a[at:end] != b[at:end]:
            break
        at = end
    while at < n and a[at] == b[at]:
        at += 1
    return at
