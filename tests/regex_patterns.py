"""Hypothesis strategies: regular expressions of the subset llamanode's grammar supports, drawn as a
small tree of this module's own, rendered as pattern text, each with a string the pattern matches.

Characters come from POOL: characters on which ECMA-262 and Python's re agree for `\\d \\w \\s .`, so a
string made here matches under both readings (the grammar admits exactly those)."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import reject
from hypothesis import strategies as st

POOL = [chr(c) for c in range(0x20, 0x7F)] + list("\t\n\x00\x01\x08\x0b\x0c\x7f\xa0€—😀")
_META = set("\\^$.|?*+()[]{}/-\"'")  # escaped outside classes (some need not be: both engines accept it)
_IN_CLASS = set("\\]^-[&~|")  # escaped inside classes (`&&`, `--`, `~~`, `||` make Python warn)
_CONTROL_NAMES = {"\n": "\\n", "\t": "\\t", "\x0b": "\\v", "\x0c": "\\f"}


class OracleTimeout(Exception):
    """Python's re took longer than its budget on a pattern (it backtracks, exponentially on some)."""


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Raise OracleTimeout if the body runs past `seconds` (since 3.11 a signal interrupts re's matching)."""

    def expire(signum: int, frame: object) -> None:
        raise OracleTimeout(f"gave up after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def search_or_reject(pattern: str, text: str, seconds: float = 1.0) -> bool:
    """re.search as the oracle, or discard the draw when the oracle cannot answer in time."""
    try:
        with within(seconds):
            return re.search(pattern, text) is not None
    except OracleTimeout:
        reject()


def _escape(ch: str, in_class: bool, hexed: bool) -> str:
    if ch in _CONTROL_NAMES:
        return _CONTROL_NAMES[ch]
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    if ch in (_IN_CLASS if in_class else _META):
        return "\\" + ch
    if hexed and ord(ch) <= 0xFFFF:
        return f"\\u{ord(ch):04X}"
    return ch


def _members(text: str) -> tuple[str, ...]:
    """POOL characters the single-character pattern matches (Python's re, which agrees on POOL)."""
    compiled = re.compile(text)
    return tuple(c for c in POOL if compiled.fullmatch(c))


@st.composite
def _char_class(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["char", "range", "shorthand"]))
        if kind == "shorthand":
            parts.append("\\" + draw(st.sampled_from("dDwWsS")))
        elif kind == "char":
            parts.append(_escape(draw(st.sampled_from(POOL)), True, draw(st.booleans())))
        else:
            a, b = sorted(draw(st.lists(st.sampled_from(POOL), min_size=2, max_size=2)))
            parts.append(_escape(a, True, False) + "-" + _escape(b, True, False))
    return "[" + ("^" if draw(st.booleans()) else "") + "".join(parts) + "]"


@st.composite
def _atom(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["literal", "literal", "dot", "shorthand", "class"]))
    if kind == "literal":
        return _escape(draw(st.sampled_from(POOL)), False, draw(st.booleans()))
    if kind == "dot":
        return "."
    if kind == "shorthand":
        return "\\" + draw(st.sampled_from("dDwWsS"))
    return draw(_char_class())


@st.composite
def _quantifier(draw: st.DrawFn) -> tuple[str, int, int]:
    """The quantifier's text and the counts a drawn match may use."""
    lo = draw(st.integers(0, 3))
    hi = lo + draw(st.integers(0, 2))
    text, counts = draw(
        st.sampled_from([("", (1, 1)), ("*", (0, 2)), ("+", (1, 3)), ("?", (0, 1)), (f"{{{lo}}}", (lo, lo)),
                         (f"{{{lo},}}", (lo, lo + 2)), (f"{{{lo},{hi}}}", (lo, hi))])
    )  # fmt: skip
    return text + ("?" if text and draw(st.booleans()) else ""), *counts


@st.composite
def _sequence(draw: st.DrawFn, depth: int) -> tuple[str, str]:
    """(regex, a string it matches entirely)."""
    text, sample = "", ""
    for _ in range(draw(st.integers(0 if depth < 2 else 1, 3))):
        choices: list[str]  # what one occurrence of the item may match
        if depth > 0 and draw(st.integers(0, 3)) == 0:
            options = draw(st.lists(_sequence(depth - 1), min_size=1, max_size=3))
            item = draw(st.sampled_from(["(", "(?:"])) + "|".join(o[0] for o in options) + ")"
            choices = [o[1] for o in options]
        else:
            item = draw(_atom())
            choices = list(_members(item))
            if not choices:
                continue  # e.g. [^\s\S]: matches nothing
        quantifier, lo, hi = draw(_quantifier())
        text += item + quantifier
        sample += "".join(draw(st.sampled_from(choices)) for _ in range(draw(st.integers(lo, hi))))
    return text, sample


@st.composite
def pattern_and_match(draw: st.DrawFn) -> tuple[str, str]:
    """(pattern, a string it matches): anchors at either end or not; unanchored sides get free text."""
    branches = [draw(_sequence(2)) for _ in range(draw(st.integers(1, 2)))]
    start, end = draw(st.booleans()), draw(st.booleans())
    text = ("^" if start else "") + "|".join(b for b, _ in branches) + ("$" if end else "")
    if len(branches) > 1 and (start or end):
        text = ("^" if start else "") + "(?:" + "|".join(b for b, _ in branches) + ")" + ("$" if end else "")
    free = st.text(st.sampled_from(POOL), max_size=3)
    sample = ("" if start else draw(free)) + draw(st.sampled_from(branches))[1] + ("" if end else draw(free))
    assert search_or_reject(text, sample), (text, sample)  # the strategy's own promise
    return text, sample
