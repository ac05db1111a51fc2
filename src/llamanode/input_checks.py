"""Checks of a caller's prefix or suffix text, made before anything resident changes."""

from __future__ import annotations

from .errors import InvalidInputError, ManifestMismatchError
from .manifest import ContextManifest, byte_hash

__all__ = ["check_segments", "utf8_of"]


def utf8_of(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid UTF-8 (lone surrogate at {exc.start})") from exc


def check_segments(manifest: ContextManifest, raw: bytes) -> None:
    """Segments, when given, must tile the text exactly: same lengths, same hashes."""
    if not manifest.segments:
        return
    at = 0
    for seg in manifest.segments:
        if byte_hash(raw[at : at + seg.byte_len]) != seg.byte_hash:
            raise ManifestMismatchError(f"segment {seg.name!r} does not match the text at byte {at}", "segments")
        at += seg.byte_len
    if at != len(raw):
        raise ManifestMismatchError(f"segments cover {at} bytes, the text has {len(raw)}", "segments")
