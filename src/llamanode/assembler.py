"""ContextAssembler: orders a turn's named prefix segments so that what changes often goes last.

Exact by construction: segments move whole (never split or rewritten), the caller's pinned
segments lead, and reuse stays the session's ordinary longest-common-prefix rule. The assembler
learns each segment's volatility from the turns it sees and moves a segment only on clear evidence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .assembler_checks import state_body, state_field, validated_pairs, validated_pins
from .config import _Options, _require
from .errors import InvalidInputError
from .manifest import byte_hash

__all__ = [
    "STATE_FORMAT",
    "AssemblerPolicy",
    "Assembly",
    "AssemblyReport",
    "ContextAssembler",
    "SegmentMove",
    "SegmentVolatility",
]

STATE_FORMAT = "llamanode.assembler/1"


@dataclass(frozen=True)
class AssemblerPolicy(_Options):
    """How much evidence moves a segment.

    A segment joins the volatile tail when its score (a fast-decayed rate of text changes per turn
    seen) reaches volatile_at and its slower change rate exceeds the break rate of the body it would
    move behind (body segments that changed or left per turn): moving behind segments that break
    more often than it changes would cost more than it saves. With the defaults one edit gives a
    score of 0.5 (the order stays) and a second within two turns 0.75; a tail segment settles back
    once its score decays to 0.2.
    """

    decay: float = 0.5  # weight of the past in the score: score = decay * score + (1 - decay) * changed
    rate_decay: float = 0.9  # weight of the past in the slower change and break rates
    volatile_at: float = 0.6  # score at or above which a segment may join the volatile tail
    stable_at: float = 0.2  # score at or below which a tail segment returns before the tail
    # two tail segments swap places only when their change rates differ by more (else they flap: each swap
    # is free the turn it is made, and costs the next turn whose change hits the one moved last)
    reorder_margin: float = 0.1
    forget_after: int = 64  # turns an absent segment's history is kept

    def __post_init__(self) -> None:
        for name in ("decay", "rate_decay", "volatile_at", "stable_at", "reorder_margin"):
            value = getattr(self, name)
            _require(isinstance(value, int | float) and not isinstance(value, bool), f"{name} must be a number")
        _require(0.0 < self.decay < 1.0, f"decay must be in (0, 1), got {self.decay}")
        _require(0.0 < self.rate_decay < 1.0, f"rate_decay must be in (0, 1), got {self.rate_decay}")
        _require(0.0 <= self.stable_at < self.volatile_at <= 1.0, "need 0 <= stable_at < volatile_at <= 1")
        _require(0.0 <= self.reorder_margin <= 1.0, f"reorder_margin must be in [0, 1], got {self.reorder_margin}")
        _require(isinstance(self.forget_after, int) and self.forget_after >= 1, "forget_after must be an int >= 1")


@dataclass(frozen=True)
class SegmentVolatility:
    """What the assembler knows about one segment after this turn."""

    name: str
    score: float
    volatile: bool  # in the volatile tail
    pinned: bool
    changed: bool  # its text differs from the last time it was seen
    seen: int  # turns it was present
    changes: int  # turns its text had changed
    rate: float  # slower-decayed changes per turn, compared with the body's break rate


@dataclass(frozen=True)
class SegmentMove:
    """A segment that arrived, left, or changed group this turn, and why."""

    name: str
    before: int | None  # index in the previous order; None: it was not there
    after: int | None  # index in this order; None: it was removed
    reason: str  # new | returned | removed | volatile | settled | reordered | pinned | unpinned
    detail: str


@dataclass(frozen=True)
class AssemblyReport:
    """Why this turn's order is what it is."""

    turn: int
    order: tuple[str, ...]
    segments: tuple[SegmentVolatility, ...]  # in order
    moves: tuple[SegmentMove, ...]
    waiting: tuple[str, ...]  # tail segments ready to settle, kept in place until a move costs nothing
    body_break_rate: float  # how often a segment before the tail changed or left, per turn
    kept_segments: int  # leading segments identical (name and text) to the last turn's: reusable as they are

    def describe(self) -> str:
        """One line: the order, then each move with its reason."""
        parts = [f"order {', '.join(self.order)}"]
        parts += [f"{m.name}: {m.reason} ({m.detail})" for m in self.moves]
        parts += [f"{name}: waits in the tail until a move costs nothing" for name in self.waiting]
        return "; ".join(parts)


@dataclass(frozen=True)
class Assembly:
    """The ordered (name, text) pairs for Session.prefix, and the report that explains them."""

    segments: tuple[tuple[str, str], ...]
    report: AssemblyReport


@dataclass
class _Track:
    digest: str
    score: float = 0.0
    volatile: bool = False
    seen: int = 1
    changes: int = 0
    last_turn: int = 0
    recent_changes: float = 0.0  # changes and turns, both decayed by rate_decay: their ratio is the rate
    recent_turns: float = 0.0

    @property
    def rate(self) -> float:
        return self.recent_changes / self.recent_turns if self.recent_turns else 0.0


class ContextAssembler:
    """Learns one workspace's segment volatility and orders its prefix so what changes goes last.

    Pinned segments lead in the caller's order; then the stable segments, then the volatile tail.
    The caller's order only seeds where a segment first goes. One assembler per workspace;
    it is not thread-safe. Deterministic: the same history gives the same orders and reports.
    """

    def __init__(self, policy: AssemblerPolicy | None = None) -> None:
        self.policy = policy or AssemblerPolicy()
        self._turn = 0
        self._order: list[str] = []
        self._pinned: list[str] = []
        self._tracks: dict[str, _Track] = {}
        self._body_breaks = 0.0  # body segments that changed or left, and body segments seen, both decayed
        self._body_turns = 0.0

    @property
    def body_break_rate(self) -> float:
        return self._body_breaks / self._body_turns if self._body_turns else 0.0

    def assemble(
        self, segments: Sequence[tuple[str, str]] | Mapping[str, str], pinned: Collection[str] = ()
    ) -> Assembly:
        """Observe this turn's segments and return them ordered, with the report."""
        pairs = validated_pairs(segments)
        texts = dict(pairs)
        pins = validated_pins(pinned, texts)
        head = [name for name, _ in pairs if name in pins]
        before = [(name, self._tracks[name].digest) for name in self._order]
        self._turn += 1
        self._count_body_breaks(texts)
        changed, moves = self._observe(pairs, pins)
        order, waiting = self._arrange(head, [name for name, _ in pairs], before, changed, moves)
        moves += self._pin_moves(head, texts)
        moves += [SegmentMove(n, None, None, "removed", "not in this turn") for n in self._order if n not in texts]
        report = AssemblyReport(
            turn=self._turn,
            order=tuple(order),
            segments=tuple(self._volatility(name, name in pins, name in changed) for name in order),
            moves=tuple(sorted(_placed(moves, self._order, order), key=_move_key)),
            waiting=tuple(waiting),
            body_break_rate=self.body_break_rate,
            kept_segments=_common_lead(before, self._keyed(order)),
        )
        self._order, self._pinned = order, head
        self._forget()
        return Assembly(tuple((name, texts[name]) for name in order), report)

    # -- learning ------------------------------------------------------------------------------
    def _observe(self, pairs: list[tuple[str, str]], pins: set[str]) -> tuple[set[str], list[SegmentMove]]:
        """Update every present segment's score; return the changed names and moves into the tail.

        A pinned segment's group is frozen while it is pinned (its score still learns).
        """
        changed: set[str] = set()
        moves: list[SegmentMove] = []
        for name, text in pairs:
            digest = byte_hash(text)
            track = self._tracks.get(name)
            if track is None:
                self._tracks[name] = _Track(digest, last_turn=self._turn)
                where = _arrival_place(name in pins, False)
                moves.append(SegmentMove(name, None, None, "new", f"first seen; {where}"))
                continue
            differs = digest != track.digest
            track.score = self.policy.decay * track.score + (1.0 - self.policy.decay) * differs
            track.recent_changes = self.policy.rate_decay * track.recent_changes + differs
            track.recent_turns = self.policy.rate_decay * track.recent_turns + 1.0
            track.digest, track.seen, track.changes = digest, track.seen + 1, track.changes + differs
            track.last_turn = self._turn
            if differs:
                changed.add(name)
            if name not in self._order:
                where = _arrival_place(name in pins, track.volatile)
                moves.append(SegmentMove(name, None, None, "returned", f"seen in {track.seen - 1} turns; {where}"))
            if name not in pins and not track.volatile and self._clearly_volatile(track):
                track.volatile = True
                rates = f"; changes {track.rate:.2f}/turn > body breaks {self.body_break_rate:.2f}/turn"
                moves.append(SegmentMove(name, None, None, "volatile", self._evidence(track, ">=") + rates))
        return changed, moves

    def _clearly_volatile(self, track: _Track) -> bool:
        return track.score >= self.policy.volatile_at and track.rate > self.body_break_rate

    def _count_body_breaks(self, texts: Mapping[str, str]) -> None:
        """Last turn's segments between the pins and the tail: how many changed or left."""
        body = [n for n in self._order if n not in self._pinned and not self._tracks[n].volatile]
        broke = sum(n not in texts or byte_hash(texts[n]) != self._tracks[n].digest for n in body)
        self._body_breaks = self.policy.rate_decay * self._body_breaks + broke
        self._body_turns = self.policy.rate_decay * self._body_turns + len(body)

    def _evidence(self, track: _Track, cmp: str) -> str:
        bound = self.policy.volatile_at if cmp == ">=" else self.policy.stable_at
        return f"text changed in {track.changes} of {track.seen} turns; score {track.score:.2f} {cmp} {bound:.2f}"

    def _forget(self) -> None:
        horizon = self._turn - self.policy.forget_after
        for name in [n for n, t in self._tracks.items() if t.last_turn < horizon]:
            del self._tracks[name]

    # -- ordering ------------------------------------------------------------------------------
    def _arrange(
        self,
        head: list[str],
        names: list[str],
        before: list[tuple[str, str]],
        changed: set[str],
        moves: list[SegmentMove],
    ) -> tuple[list[str], list[str]]:
        """Pinned head, stable body, volatile tail; settle tail segments only when that costs nothing."""
        present, pins = set(names), set(head)
        kept = [n for n in self._order if n in present and n not in pins]
        arrivals = [n for n in names if n not in pins and n not in kept]
        stable = [n for n in kept if not self._tracks[n].volatile]
        promoted = {m.name for m in moves if m.reason == "volatile"}  # they go last, behind the older tail
        tail = [n for n in kept if self._tracks[n].volatile and n not in promoted]
        tail += sorted((n for n in kept if n in promoted), key=self._rate_key)
        stable += [n for n in arrivals if not self._tracks[n].volatile]
        tail += [n for n in arrivals if self._tracks[n].volatile]
        tail = self._free_sort(before, head + stable, tail, moves)
        settling = [n for n in tail if n not in changed and self._tracks[n].score <= self.policy.stable_at]
        base = head + stable + tail
        if not settling:
            return base, []
        moved = head + stable + settling + [n for n in tail if n not in settling]
        if _common_lead(before, self._keyed(moved)) < _common_lead(before, self._keyed(base)):
            return base, settling
        for name in settling:
            self._tracks[name].volatile = False
            moves.append(SegmentMove(name, None, None, "settled", self._evidence(self._tracks[name], "<=")))
        return moved, []

    def _rate_key(self, name: str) -> float:
        return self._tracks[name].rate

    def _free_sort(
        self, before: list[tuple[str, str]], lead: list[str], tail: list[str], moves: list[SegmentMove]
    ) -> list[str]:
        """The tail, most often changed last, when that costs nothing this turn (the segments it moves are
        recomputed anyway): otherwise as it stands."""
        ranked = sorted(tail, key=self._rate_key)  # stable: equal rates keep their order
        if ranked == tail or self._close_swap(tail, ranked):
            return tail
        if _common_lead(before, self._keyed(lead + ranked)) < _common_lead(before, self._keyed(lead + tail)):
            return tail
        for name in (n for i, n in enumerate(ranked) if tail[i] != n):
            detail = f"changes {self._tracks[name].rate:.2f}/turn: the tail goes most often changed last (free now)"
            moves.append(SegmentMove(name, None, None, "reordered", detail))
        return ranked

    def _close_swap(self, tail: list[str], ranked: list[str]) -> bool:
        """Whether ranking the tail would swap two segments whose change rates are within reorder_margin."""
        place = {name: i for i, name in enumerate(ranked)}
        margin = self.policy.reorder_margin
        return any(
            place[a] > place[b] and abs(self._tracks[a].rate - self._tracks[b].rate) <= margin
            for i, a in enumerate(tail)
            for b in tail[i + 1 :]
        )

    def _pin_moves(self, head: list[str], present: Mapping[str, str]) -> list[SegmentMove]:
        """Segments of the last turn that the caller pinned or unpinned."""
        was, now = set(self._pinned), set(head)
        moves = [SegmentMove(n, None, None, "pinned", "the caller pinned it") for n in head if n not in was]
        moves = [m for m in moves if m.name in self._order]  # an arrival already says "new" or "returned"
        unpinned = [n for n in self._pinned if n not in now and n in present]
        return moves + [SegmentMove(n, None, None, "unpinned", "placed by its volatility") for n in unpinned]

    def _keyed(self, order: list[str]) -> list[tuple[str, str]]:
        return [(name, self._tracks[name].digest) for name in order]

    def _volatility(self, name: str, pinned: bool, changed: bool) -> SegmentVolatility:
        t = self._tracks[name]
        return SegmentVolatility(name, t.score, t.volatile, pinned, changed, t.seen, t.changes, t.rate)

    # -- persistence ---------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """The learned state as plain JSON-able data (from_state() restores it exactly)."""
        return {
            "format": STATE_FORMAT,
            "policy": asdict(self.policy),
            "turn": self._turn,
            "order": list(self._order),
            "pinned": list(self._pinned),
            "body": [self._body_breaks, self._body_turns],
            "segments": {name: asdict(track) for name, track in self._tracks.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ContextAssembler:
        """An assembler that continues exactly where export_state() left off; bad data is InvalidInputError."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidInputError(f"assembler state must be a mapping with format {STATE_FORMAT!r}")
        policy = state.get("policy")
        if not isinstance(policy, Mapping):
            raise InvalidInputError("assembler state: 'policy' must be a mapping")
        made = cls(AssemblerPolicy.from_mapping(policy))
        made._turn = state_field(state, "turn", int)
        made._tracks = {str(n): _track(n, t) for n, t in state_field(state, "segments", dict).items()}
        made._order = [str(n) for n in state_field(state, "order", list)]
        made._pinned = [str(n) for n in state_field(state, "pinned", list)]
        made._body_breaks, made._body_turns = state_body(state.get("body"))
        missing = [n for n in made._order + made._pinned if n not in made._tracks]
        if missing or not set(made._pinned) <= set(made._order) or len(set(made._order)) != len(made._order):
            raise InvalidInputError(f"assembler state: order and pins must name tracked segments once ({missing})")
        return made


def _arrival_place(pinned: bool, volatile: bool) -> str:
    if pinned:
        return "pinned at the head"
    return "placed at the end of the volatile tail" if volatile else "placed before the volatile tail"


def _common_lead(before: list[tuple[str, str]], after: list[tuple[str, str]]) -> int:
    """How many leading (name, digest) pairs the two orders share."""
    n = 0
    for old, new in zip(before, after, strict=False):
        if old != new:
            break
        n += 1
    return n


def _placed(moves: list[SegmentMove], old: list[str], new: list[str]) -> list[SegmentMove]:
    """Fill in before/after indices from the two orders."""
    return [
        SegmentMove(
            m.name,
            old.index(m.name) if m.name in old else None,
            new.index(m.name) if m.name in new else None,
            m.reason,
            m.detail,
        )
        for m in moves
    ]


def _move_key(move: SegmentMove) -> tuple[int, str]:
    return (move.after if move.after is not None else 1 << 30, move.reason)


_TRACK_FIELDS = {f.name: str(f.type) for f in fields(_Track)}
_KINDS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _track(name: object, data: object) -> _Track:
    if not isinstance(data, Mapping) or set(data) != set(_TRACK_FIELDS):
        raise InvalidInputError(f"assembler state: segment {name!r} must have exactly {sorted(_TRACK_FIELDS)}")
    for key, kind in _TRACK_FIELDS.items():
        value = data[key]
        if isinstance(value, bool) != (kind == "bool") or not isinstance(value, _KINDS[kind]):
            raise InvalidInputError(f"assembler state: segment {name!r}: {key} must be a {kind}")
    return _Track(**data)
