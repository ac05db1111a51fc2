"""Checks of what callers give a ContextAssembler: a turn's segments and pins, and a saved state's fields.
Each refuses bad input with an InvalidInputError that names it, before the assembler changes anything."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .errors import InvalidInputError

__all__ = ["state_body", "state_field", "validated_pairs", "validated_pins"]


def validated_pairs(segments: Sequence[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = list(segments.items()) if isinstance(segments, Mapping) else list(segments)
    seen: set[str] = set()
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise InvalidInputError(f"a segment must be a (name, text) pair of strings, got {pair!r:.80}")
        if pair[0] in seen:
            raise InvalidInputError(f"segment name {pair[0]!r} appears twice")
        seen.add(pair[0])
    return pairs


def validated_pins(pinned: Collection[str], texts: Mapping[str, str]) -> set[str]:
    if isinstance(pinned, str | bytes):
        raise InvalidInputError("pinned must be a collection of segment names, not a single string")
    unknown = sorted(str(n) for n in pinned if n not in texts)
    if unknown:
        raise InvalidInputError(f"pinned segment(s) not in this turn: {', '.join(unknown)}")
    return set(pinned)


def state_field(state: Mapping[str, Any], name: str, kind: type) -> Any:
    value = state.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInputError(f"assembler state: {name!r} must be a {kind.__name__}")
    return value


def state_body(value: object) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
        raise InvalidInputError("assembler state: 'body' must be [breaks, turns]")
    return float(value[0]), float(value[1])
