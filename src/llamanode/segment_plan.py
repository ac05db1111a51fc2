"""Planning approximate segment reuse: which resident KV to keep, at which new positions, and what to prefill.

After the exact common prefix, segments are matched by name (an unchanged one also by hash). A matched
segment keeps the runs of tokens it shares with its resident version (difflib's matching blocks); the runs
kept are the heaviest chain that keeps old and new order (cells are moved, never reordered). Then a share
of the kept tokens is selected for recomputation (`boundary`: the first tokens after each discontinuity;
`tail`: the last kept tokens), and every other position is prefilled. Pure functions over token ids:
segment_reuse.py applies the plan.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from .manifest import ContextManifest
from .residency import segment_starts

__all__ = ["Piece", "ReusePlan", "Run", "Span", "plan_reuse", "segment_spans"]


@dataclass(frozen=True)
class Span:
    """One segment's tokens in a prefix."""

    name: str
    byte_hash: str
    start: int
    end: int


@dataclass(frozen=True)
class Run:
    """Tokens equal in the old and the new prefix: old cells [old_start, +length) serve new [new_start, +length)."""

    segment: str
    old_start: int
    new_start: int
    length: int

    @property
    def new_end(self) -> int:
        return self.new_start + self.length

    @property
    def old_end(self) -> int:
        return self.old_start + self.length

    @property
    def shift(self) -> int:
        return self.new_start - self.old_start


@dataclass(frozen=True)
class Piece:
    """Contiguous cells kept as they are and moved by one shift."""

    old_start: int
    new_start: int
    length: int

    @property
    def shift(self) -> int:
        return self.new_start - self.old_start


@dataclass(frozen=True)
class ReusePlan:
    """How the new prefix is made: [0, lcp) exact, pieces kept approximately, computed ranges prefilled."""

    lcp: int
    n_tokens: int
    runs: tuple[Run, ...]  # the matched runs, before selection (for reporting per segment)
    pieces: tuple[Piece, ...]  # kept cells, in position order
    computed: tuple[tuple[int, int], ...]  # [start, end) ranges to prefill, in position order
    note: str = ""  # why nothing is kept, when nothing is

    def kept_in(self, start: int, end: int) -> int:
        return sum(max(0, min(end, p.new_start + p.length) - max(start, p.new_start)) for p in self.pieces)


def segment_spans(
    manifest: ContextManifest, offsets: Sequence[int] | None, n_tokens: int, text_hash: str
) -> list[Span]:
    """Token range of each segment (a token belongs to the segment its first byte lies in)."""
    if not manifest.segments:
        return [Span("", text_hash, 0, n_tokens)]
    assert offsets is not None
    spans = []
    for seg, start in zip(manifest.segments, segment_starts(manifest.segments), strict=True):
        spans.append(
            Span(seg.name, seg.byte_hash, bisect_left(offsets, start), bisect_left(offsets, start + seg.byte_len))
        )
    return spans


def plan_reuse(
    old_tokens: Sequence[int],
    old_spans: Sequence[Span],
    new_tokens: Sequence[int],
    new_spans: Sequence[Span],
    lcp: int,
    selection: str,
    share: float,
    min_run: int,
) -> ReusePlan:
    """The plan for new_tokens given the resident old_tokens (only cells < len(old_tokens) may be kept)."""
    n = len(new_tokens)
    runs = _chain([_clip(r, lcp, len(old_tokens)) for r in _matched_runs(old_tokens, old_spans, new_tokens, new_spans)])
    src: list[int] = [-1] * (n - lcp)  # per new position from lcp: the old position whose cell serves it, or -1
    for run in runs:
        src[run.new_start - lcp : run.new_end - lcp] = range(run.old_start, run.old_end)
    _drop_short(src, min_run)
    if not any(s >= 0 for s in src):
        note = f"no run of at least {min_run} matching tokens after the first change"
        return ReusePlan(lcp, n, tuple(runs), (), ((lcp, n),) if n > lcp else (), note)
    _select(src, selection, share)
    exact_lcp, lcp = lcp, _no_lone_tokens(src, lcp)
    if not any(s >= 0 for s in src):
        note = "every matching token was selected for recomputation"
        return ReusePlan(exact_lcp, n, tuple(runs), (), ((exact_lcp, n),), note)
    if not _ranges(src, lcp):  # a shift takes effect at the next prefill: end with one
        src[-2:] = [-1, -1]
    return ReusePlan(lcp, n, tuple(runs), tuple(_pieces(src, lcp)), tuple(_ranges(src, lcp)))


def _matched_runs(
    old_tokens: Sequence[int], old_spans: Sequence[Span], new_tokens: Sequence[int], new_spans: Sequence[Span]
) -> list[Run]:
    """Head and tail runs of every new segment matched to an old one of the same name (same hash first)."""
    unused = list(range(len(old_spans)))
    runs = []
    for new in new_spans:
        named = [i for i in unused if old_spans[i].name == new.name]
        if not named:
            continue
        same = [i for i in named if old_spans[i].byte_hash == new.byte_hash]
        pick = (same or named)[0]
        unused.remove(pick)
        runs += _shared_runs(old_tokens, old_spans[pick], new_tokens, new)
    return runs


def _shared_runs(old_tokens: Sequence[int], old: Span, new_tokens: Sequence[int], new: Span) -> list[Run]:
    """The runs a segment shares with its resident version, in order; an unchanged one is one run."""
    a, b = old_tokens[old.start : old.end], new_tokens[new.start : new.end]
    if a == b:
        return [Run(new.name, old.start, new.start, len(a))] if a else []
    # difflib: the longest matching blocks, in order and never crossing (autojunk off: code repeats tokens)
    blocks = SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    return [Run(new.name, old.start + m.a, new.start + m.b, m.size) for m in blocks if m.size]


def _clip(run: Run, lcp: int, old_len: int) -> Run:
    """The part of a run after the exact prefix (its cells there serve the prefix) and within old_len."""
    cut = max(0, lcp - run.new_start, lcp - run.old_start)
    length = min(run.length - cut, old_len - run.old_start - cut)
    return Run(run.segment, run.old_start + cut, run.new_start + cut, max(0, length))


def _chain(runs: list[Run]) -> list[Run]:
    """The heaviest set of runs whose old and new ranges both come in the same order (cells only move)."""
    runs = sorted((r for r in runs if r.length > 0), key=lambda r: (r.new_start, r.old_start))
    best: list[tuple[int, int]] = []  # per run: (total length of the best chain ending here, predecessor)
    for i, run in enumerate(runs):
        before = [
            (best[j][0], j) for j in range(i) if runs[j].new_end <= run.new_start and runs[j].old_end <= run.old_start
        ]
        total, prev = max(before, default=(0, -1))
        best.append((total + run.length, prev))
    if not runs:
        return []
    at = max(range(len(runs)), key=lambda i: best[i][0])
    chain = []
    while at >= 0:
        chain.append(runs[at])
        at = best[at][1]
    return chain[::-1]


def _groups(src: list[int]) -> list[tuple[int, int]]:
    """[start, end) index ranges of src whose cells are contiguous and move together."""
    groups, at = [], 0
    while at < len(src):
        if src[at] < 0:
            at += 1
            continue
        end = at + 1
        while end < len(src) and src[end] == src[end - 1] + 1:
            end += 1
        groups.append((at, end))
        at = end
    return groups


def _drop_short(src: list[int], min_run: int) -> None:
    for start, end in _groups(src):
        if end - start < min_run:
            src[start:end] = [-1] * (end - start)


def _select(src: list[int], selection: str, share: float) -> None:
    """Mark the selected share of the kept positions for recomputation."""
    groups = _groups(src)
    if selection == "boundary":  # the first tokens after each discontinuity
        for start, end in groups:
            take = math.ceil(share * (end - start))
            src[start : start + take] = [-1] * min(take, end - start)
        return
    budget = math.ceil(share * sum(end - start for start, end in groups))
    for start, end in reversed(groups):  # tail: the last kept tokens before the suffix
        take = min(budget, end - start)
        src[end - take : end] = [-1] * take
        budget -= take


def _ranges(src: list[int], lcp: int) -> list[tuple[int, int]]:
    ranges, at = [], 0
    while at < len(src):
        if src[at] >= 0:
            at += 1
            continue
        end = at
        while end < len(src) and src[end] < 0:
            end += 1
        ranges.append((lcp + at, lcp + end))
        at = end
    return ranges


def _no_lone_tokens(src: list[int], lcp: int) -> int:
    """Grow every one-token range by a neighbour (a batch of one is never prefilled); returns the new lcp."""
    while True:
        lone = next(((s, e) for s, e in _ranges(src, lcp) if e - s == 1 and s > 0), None)  # position 0 may be alone
        if lone is None:
            return lcp
        at = lone[0] - lcp
        if at + 1 < len(src):
            src[at + 1] = -1
        elif at > 0:
            src[at - 1] = -1
        else:  # the lone token follows the exact prefix directly: re-prefill its predecessor with it
            src.insert(0, -1)
            lcp -= 1


def _pieces(src: list[int], lcp: int) -> list[Piece]:
    return [Piece(src[start], lcp + start, end - start) for start, end in _groups(src)]
