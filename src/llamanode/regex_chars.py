"""Sets of code points for the regular expressions of JSON Schema's `pattern`.

A schema's pattern is an ECMA-262 regular expression, but validators differ: Python's `re` (the
`jsonschema` package) gives `\\d`, `\\w` and `\\s` their Unicode meaning, ECMA-262 their ASCII one,
and `.` excludes different line breaks. Every class here carries two sets: `under`, the characters
it matches under both readings (what a grammar may admit), and `over`, those it matches under either
(what a negated class must exclude). A document the grammar admits then matches either way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SCALARS", "CharSet", "Ranges", "complement", "dot", "intersect", "shorthand", "single", "union"]

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent inclusive code point ranges
MAX_CODE = 0x10FFFF
SCALARS: Ranges = ((0, 0xD7FF), (0xE000, MAX_CODE))  # every code point but the surrogates

_ECMA_DIGIT: Ranges = ((0x30, 0x39),)
_ECMA_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_ECMA_SPACE: Ranges = (  # WhiteSpace and LineTerminator (ECMA-262 22.2.2.9)
    *((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)),
    *((0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)),
)
_LINE_BREAKS: Ranges = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))  # what ECMA-262's `.` excludes


def union(*sets: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for s in sets for r in s):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return tuple(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    return complement(union(complement(a), complement(b)))


@dataclass(frozen=True)
class CharSet:
    """What one class item matches under both readings (under) and under either (over)."""

    under: Ranges
    over: Ranges

    def negated(self) -> CharSet:
        return CharSet(complement(self.over), complement(self.under))


def single(code: int) -> CharSet:
    return CharSet(((code, code),), ((code, code),))


def dot() -> CharSet:
    """`.`: ECMA-262 excludes \\n, \\r, U+2028 and U+2029; Python's re excludes only \\n."""
    return CharSet(complement(_LINE_BREAKS), complement(((0x0A, 0x0A),)))


def shorthand(letter: str) -> CharSet:
    """\\d \\w \\s and their negations \\D \\W \\S."""
    ecma = {"d": _ECMA_DIGIT, "w": _ECMA_WORD, "s": _ECMA_SPACE}[letter.lower()]
    python = _python_class(letter.lower())
    positive = CharSet(intersect(ecma, python), union(ecma, python))
    return positive.negated() if letter.isupper() else positive


@functools.cache
def _python_class(letter: str) -> Ranges:
    """The code points Python's re matches with \\<letter> (Unicode str patterns), as ranges."""
    found: list[tuple[int, int]] = []
    for m in re.finditer(rf"\{letter}+", _all_scalars()):
        lo, hi = _code(m.start()), _code(m.end() - 1)
        found.extend([(lo, 0xD7FF), (0xE000, hi)] if lo < 0xD800 < hi else [(lo, hi)])
    return union(found)


@functools.cache
def _all_scalars() -> str:
    return "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, MAX_CODE + 1)))


def _code(index: int) -> int:
    """The code point at index of _all_scalars()."""
    return index if index < 0xD800 else index + 0x800
