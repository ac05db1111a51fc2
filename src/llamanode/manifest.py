"""The manifest: what makes resident KV reusable. Digests and token hashes live here."""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

__all__ = [
    "IDENTITY_FIELDS",
    "RENDERING_FIELDS",
    "ContextManifest",
    "ManifestSegment",
    "byte_hash",
    "hash_token_ids",
    "join_segments",
]

# Checked against the session itself: a mismatch is refused (ManifestMismatchError).
IDENTITY_FIELDS = ("model_digest", "tokenizer_digest", "runtime_digest")
# The caller's rendering choices: a change makes resident KV unusable (full prefill, explained).
RENDERING_FIELDS = ("template_digest", "add_bos")


def byte_hash(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def hash_token_ids(tokens: Sequence[int]) -> str:
    """sha256 of the ids as little-endian int32: equal ids, equal hash, on any machine."""
    packed = array("i", tokens)
    if sys.byteorder == "big":
        packed.byteswap()
    return hashlib.sha256(packed.tobytes()).hexdigest()


@dataclass(frozen=True)
class ManifestSegment:
    """A named, contiguous piece of the prefix text (system prompt, repo map, one file...)."""

    name: str
    byte_len: int
    byte_hash: str

    @classmethod
    def of(cls, name: str, text: str) -> ManifestSegment:
        raw = text.encode("utf-8")
        return cls(name=name, byte_len=len(raw), byte_hash=byte_hash(raw))


@dataclass(frozen=True)
class ContextManifest:
    """Everything that decides whether resident KV may be reused for a prefix.

    `digest` covers identity and rendering fields, not segments: segments only explain
    which part of the text is resident or changed.
    """

    model_digest: str
    tokenizer_digest: str
    runtime_digest: str
    template_digest: str
    add_bos: bool
    segments: tuple[ManifestSegment, ...] = field(default=())

    @cached_property
    def digest(self) -> str:
        keyed = {name: getattr(self, name) for name in IDENTITY_FIELDS + RENDERING_FIELDS}
        return byte_hash(json.dumps(keyed, sort_keys=True))

    def with_segments(self, segments: Iterable[ManifestSegment]) -> ContextManifest:
        return replace(self, segments=tuple(segments))

    def first_difference(self, other: ContextManifest) -> str | None:
        """Name of the first identity or rendering field that differs, or None."""
        for name in IDENTITY_FIELDS + RENDERING_FIELDS:
            if getattr(self, name) != getattr(other, name):
                return name
        return None


def join_segments(base: ContextManifest, segments: Iterable[tuple[str, str]]) -> tuple[ContextManifest, str]:
    """Build (manifest with segments, prefix text) from (name, text) pairs in order."""
    pairs = list(segments)
    manifest = base.with_segments(ManifestSegment.of(name, text) for name, text in pairs)
    return manifest, "".join(text for _, text in pairs)
