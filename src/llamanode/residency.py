"""Map tokens back to manifest segments and explain where resident KV diverged."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from .manifest import ContextManifest, ManifestSegment
from .prefix import common_prefix_len
from .session import Divergence, SegmentResidency

__all__ = ["explain_divergence", "segment_residency", "segment_starts", "token_byte_offsets"]


def token_byte_offsets(
    tokens: Sequence[int], token_bytes: Callable[[int], bytes], text_len: int, added_bos: bool
) -> list[int] | None:
    """Byte offset where each token starts, or None if pieces do not add up to the text."""
    offsets, at = [], 0
    for i, token in enumerate(tokens):
        offsets.append(at)
        if not (i == 0 and added_bos):
            at += len(token_bytes(token))
    return offsets if at == text_len else None


def segment_starts(segments: Sequence[ManifestSegment]) -> list[int]:
    starts, at = [], 0
    for seg in segments:
        starts.append(at)
        at += seg.byte_len
    return starts


def _segment_at(manifest: ContextManifest, byte_offset: int) -> str | None:
    for seg, start in zip(manifest.segments, segment_starts(manifest.segments), strict=True):
        if start <= byte_offset < start + seg.byte_len:
            return seg.name
    return manifest.segments[-1].name if manifest.segments else None


def segment_residency(
    manifest: ContextManifest, offsets: list[int] | None, n_tokens: int, reused: int
) -> tuple[SegmentResidency, ...]:
    rows = []
    for seg, start in zip(manifest.segments, segment_starts(manifest.segments), strict=True):
        t0 = t1 = None
        if offsets is not None:
            # offsets never decrease, so the first token at or after a byte is a binary search
            t0 = bisect_left(offsets, start)
            t1 = bisect_left(offsets, start + seg.byte_len)
        kept = 0 if t0 is None or t1 is None else max(0, min(reused, t1) - t0)
        span = None if t0 is None or t1 is None else t1 - t0
        state = "reused" if span is not None and kept == span else ("partial" if kept else "prefilled")
        rows.append(SegmentResidency(seg.name, start, seg.byte_len, t0, t1, kept, state))
    return tuple(rows)


def explain_divergence(
    old_manifest: ContextManifest | None,
    old_text: bytes,
    old_prefix_tokens: int,
    new_manifest: ContextManifest,
    new_text: bytes,
    new_tokens: int,
    lcp: int,
    stable_limit: int,
    offsets: list[int] | None,
    generated_blocked: bool = False,
    resumed: bool = False,
    approximated_blocked: bool = False,
) -> Divergence | None:
    """Name the cause of the first non-reused token, or None when everything was reused.

    generated_blocked: the next resident token matched but came from a decode step, which
    is never reused (its KV differs from a batched prefill).
    approximated_blocked: it matched but its KV was reused approximately, which an exact request
    never reuses. resumed: the old state is an unfinished prefill (old_text its target, old_prefix_tokens
    what it reached).
    """
    if old_manifest is None:
        return Divergence("cold", 0, _segment_at(new_manifest, 0), 0, "no prefix was resident")
    changed = old_manifest.first_difference(new_manifest)
    if changed is not None:
        return Divergence("manifest_changed", 0, None, 0, f"{changed} differs from the resident prefix's")
    if lcp >= new_tokens:
        if new_tokens < old_prefix_tokens:
            detail = f"prefix shrank from {old_prefix_tokens} to {new_tokens} tokens"
            return Divergence("shrunk", lcp, None, len(new_text), detail)
        return None
    token_byte = offsets[lcp] if offsets is not None and lcp < len(offsets) else None
    token_segment = _segment_at(new_manifest, token_byte) if token_byte is not None else None
    if resumed and lcp >= old_prefix_tokens:
        detail = f"an unfinished prefill (a stopped prewarm or prefill) had reached token {old_prefix_tokens}"
        return Divergence("resumed", lcp, token_segment, token_byte, detail)
    if lcp == stable_limit and approximated_blocked:
        detail = "approximately reused KV is re-prefilled for an exact request"
        return Divergence("approximated", lcp, token_segment, token_byte, detail)
    if lcp == stable_limit and generated_blocked:
        detail = "decode-step KV is re-prefilled in a batch"
        return Divergence("generated_tokens", lcp, token_segment, token_byte, detail)
    byte_diff = common_prefix_len(old_text, new_text)
    if byte_diff == len(new_text) < len(old_text):  # cut inside a token: its new last token re-tokenized
        detail = f"prefix shrank from {old_prefix_tokens} to {new_tokens} tokens, cutting its last token"
        return Divergence("shrunk", lcp, token_segment, token_byte, detail)
    edited = _segment_at(new_manifest, byte_diff)
    first = token_segment if token_byte is not None else edited
    if lcp >= old_prefix_tokens:
        return Divergence("appended", lcp, first, token_byte, "text added after the resident prefix")
    if first != edited:
        detail = f"edit in {edited!r} at byte {byte_diff} re-merged tokens from byte {token_byte} of {first!r}"
        return Divergence("token_boundary", lcp, first, token_byte, detail)
    return Divergence("edited", lcp, edited, byte_diff, f"text differs from byte {byte_diff}")
