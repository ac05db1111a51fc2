"""GBNF for the JSON integers in a range (JSON Schema minimum/maximum, exclusive or not).

Digit strings are split by length and then by leading digit, the usual way a numeric range
becomes a regular language; no leading zeros, no "-0", at most MAX_DIGITS digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import GrammarError

__all__ = ["BOUND_KEYWORDS", "MAX_DIGITS", "integer_bounds", "integer_range_gbnf"]

MAX_DIGITS = 16  # as the integer primitive in grammar.py: Python's int() and float precision stay safe
BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_LARGEST = 10**MAX_DIGITS - 1


def integer_bounds(schema: Mapping[str, Any], path: str) -> tuple[int | None, int | None]:
    """The smallest and largest integer the bound keywords admit (None: unbounded)."""
    lo: int | None = None
    hi: int | None = None
    for key in BOUND_KEYWORDS:
        if key not in schema:
            continue
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GrammarError(f"{path}: {key} must be a finite number, got {value!r}")
        if key == "minimum":
            lo = max(lo, math.ceil(value)) if lo is not None else math.ceil(value)
        elif key == "exclusiveMinimum":
            bound = math.floor(value) + 1
            lo = max(lo, bound) if lo is not None else bound
        elif key == "maximum":
            hi = min(hi, math.floor(value)) if hi is not None else math.floor(value)
        else:
            bound = math.ceil(value) - 1
            hi = min(hi, bound) if hi is not None else bound
    if lo is not None and hi is not None and lo > hi:
        given = {k: schema[k] for k in BOUND_KEYWORDS if k in schema}
        raise GrammarError(f"{path}: no integer lies within the bounds {given}")
    return lo, hi


def integer_range_gbnf(lo: int | None, hi: int | None, path: str) -> str:
    """A GBNF expression for the integers in [lo, hi], written without leading zeros."""
    if (lo is not None and lo > _LARGEST) or (hi is not None and hi < -_LARGEST):
        raise GrammarError(f"{path}: bounds beyond {MAX_DIGITS} digits are not supported")
    parts = []
    if hi is None or hi >= 0:
        parts.append(_magnitudes(max(lo or 0, 0), _LARGEST if hi is None else min(hi, _LARGEST)))
    if lo is None or lo < 0:
        top = _LARGEST if lo is None else min(-lo, _LARGEST)
        parts.append(f'"-" {_magnitudes(max(1, -hi if hi is not None else 1), top)}')
    return parts[0] if len(parts) == 1 else "( " + " | ".join(parts) + " )"


def _magnitudes(a: int, b: int) -> str:
    """Digit strings of the integers a..b (0 <= a <= b)."""
    alts = []
    for length in range(len(str(a)), len(str(b)) + 1):
        first = max(a, 10 ** (length - 1) if length > 1 else 0)
        last = min(b, 10**length - 1)
        alts.append(_same_length(str(first), str(last)))
    return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"


def _same_length(x: str, y: str) -> str:
    """Digit strings from x to y, both of one length."""
    if not x:
        return ""
    if x == "0" * len(x) and y == "9" * len(y):
        return f"[0-9]{{{len(x)}}}" if len(x) > 1 else "[0-9]"
    if x[0] == y[0]:
        return f'"{x[0]}" {_same_length(x[1:], y[1:])}'.strip()
    n = len(x) - 1
    alts = [f'"{x[0]}" {_same_length(x[1:], "9" * n)}'.strip()]
    if int(y[0]) - int(x[0]) > 1:
        alts.append(f"[{int(x[0]) + 1}-{int(y[0]) - 1}]" + (f" [0-9]{{{n}}}" if n else ""))
    alts.append(f'"{y[0]}" {_same_length("0" * n, y[1:])}'.strip())
    return "( " + " | ".join(alts) + " )"
