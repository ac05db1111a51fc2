"""GBNF text as llama.cpp's grammar parser reads it: literals, character classes, exact repetitions.

llama.cpp turns an upper bound above MAX_REPEAT into no bound at all (`x{0,3000}` admits 5000 x's)
and refuses a lower bound above it, so `repeat` writes larger counts as repetitions of blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import GrammarError

__all__ = ["MAX_REPEAT", "char_class", "class_char", "literal", "repeat"]

MAX_REPEAT = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp)
_BLOCK = 1000  # counts above MAX_REPEAT become blocks of this many
_LIMIT = _BLOCK * MAX_REPEAT  # the largest count `repeat` writes


def literal(text: str) -> str:
    """A GBNF string literal matching text exactly."""
    escaped = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = (escaped.get(ch) or (f"\\x{ord(ch):02X}" if ord(ch) < 0x20 else ch) for ch in text)
    return '"' + "".join(out) + '"'


def class_char(code: int) -> str:
    """One code point inside a GBNF [...] class, escaped so it is never syntax."""
    ch = chr(code)
    return ch if ch.isalnum() and code < 0x80 else f"\\x{code:02X}" if code < 0x100 else f"\\U{code:08X}"


def char_class(ranges: Sequence[tuple[int, int]]) -> str:
    """A positive class of inclusive code point ranges (never negated: llama.cpp refuses a token that
    ends inside a character when a negated class's excluded range could contain it)."""
    parts = (class_char(a) if a == b else f"{class_char(a)}-{class_char(b)}" for a, b in ranges)
    return "[" + "".join(parts) + "]"


def repeat(unit: str, lo: int, hi: int | None) -> str:
    """unit repeated lo..hi times (hi None: unbounded), exactly; "" for zero times.

    unit must be one symbol (a literal, a class or a rule name): llama.cpp multiplies a repeated
    group's generated rules by the count and refuses products above MAX_REPEAT.
    """
    if hi is not None and hi < lo:
        raise GrammarError(f"repetition {{{lo},{hi}}}: the upper bound is below the lower")
    if max(lo, hi or 0) > _LIMIT + _BLOCK:
        raise GrammarError(f"repetition counts above {_LIMIT + _BLOCK} are not supported")
    more = f"{unit}*" if hi is None else _at_most(unit, hi - lo)
    return " ".join(p for p in (_exactly(unit, lo), more) if p)


def _exactly(unit: str, n: int) -> str:
    if n <= 1:
        return unit if n else ""
    if n <= MAX_REPEAT:
        return f"{unit}{{{n}}}"
    blocks, rest = divmod(n, _BLOCK)
    return " ".join(p for p in (f"( {unit}{{{_BLOCK}}} ){{{blocks}}}", _exactly(unit, rest)) if p)


def _at_most(unit: str, n: int) -> str:
    if n <= 1:
        return f"{unit}?" if n else ""
    if n <= MAX_REPEAT:
        return f"{unit}{{0,{n}}}"
    blocks, rest = divmod(n, _BLOCK)  # 0..n = fewer than `blocks` whole blocks and a part, or all and up to rest
    fewer = f"( {unit}{{{_BLOCK}}} ){{0,{blocks - 1}}} {unit}{{0,{_BLOCK - 1}}}"
    full = " ".join(p for p in (_exactly(unit, blocks * _BLOCK), _at_most(unit, rest)) if p)
    return f"( {fewer} | {full} )"
