"""The regular expressions of JSON Schema's `pattern`, parsed into a small tree.

Supported: literals and escapes, `.`, classes with ranges and negation, `\\d \\w \\s \\D \\W \\S`,
groups `(...)`, `(?:...)` and named `(?<n>...)`, alternation, the quantifiers `* + ? {n} {n,} {n,m}`
(lazy forms too: the same language), and anchors `^`/`$` at the ends of the pattern or of one of its
top-level alternatives. Where ECMA-262 and Python's `re` read a construct differently (`{,n}`, `[]`,
`\\q`, `\\u{...}`) or it is no regular language (lookaround, backreferences, `\\b`), GrammarError
names it. A pattern is not anchored: a branch without `^` may follow any text (see regex_gbnf).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from .errors import GrammarError
from .regex_chars import SCALARS, CharSet, Ranges, dot, intersect, shorthand, single, union

__all__ = ["Alt", "Branch", "Chars", "Node", "Repeat", "Seq", "parse_pattern"]


@dataclass(frozen=True)
class Chars:
    """One character out of a set of Unicode scalar values (empty: matches nothing)."""

    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]  # empty: the empty string


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    item: Node
    lo: int
    hi: int | None  # None: unbounded


Node: TypeAlias = "Chars | Seq | Alt | Repeat"


@dataclass(frozen=True)
class Branch:
    """One top-level alternative and whether it is anchored at the start (^) and at the end ($)."""

    body: Seq
    start: bool
    end: bool


def parse_pattern(pattern: str) -> tuple[Branch, ...]:
    """The pattern's top-level alternatives; GrammarError naming what is not supported."""
    parser = _Parser(pattern)
    sequences = parser.alternation()
    if parser.pos < len(pattern):
        raise parser.error("an unbalanced ')'")
    return tuple(_branch(items, parser) for items in sequences)


_START, _END = "^", "$"  # anchor markers while parsing
_Item: TypeAlias = "Node | str"
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")
_SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B}
_REFUSED_ESCAPES = {
    "B": "the assertion \\B",
    "k": "the named backreference \\k",
    "p": "the Unicode property escape \\p",
    "P": "the Unicode property escape \\P",
    "c": "the control escape \\c",
}
_REFUSED_GROUPS = [  # after "(?"
    ("=", "the lookahead (?="),
    ("!", "the negative lookahead (?!"),
    ("<=", "the lookbehind (?<="),
    ("<!", "the negative lookbehind (?<!"),
    ("P=", "the named backreference (?P="),
    ("#", "the comment group (?#"),
]


def _branch(items: list[_Item], parser: _Parser) -> Branch:
    start = end = False
    while items and items[0] == _START:
        items, start = items[1:], True
    while items and items[-1] == _END:
        items, end = items[:-1], True
    if any(isinstance(i, str) for i in items):
        raise parser.error("an anchor (^ or $) away from the ends of the pattern and of its top-level alternatives")
    return Branch(Seq(tuple(i for i in items if not isinstance(i, str))), start, end)


def _chars(charset: CharSet) -> Chars:
    return Chars(intersect(charset.under, SCALARS))  # surrogates are no characters of a JSON string


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> GrammarError:
        return GrammarError(f"pattern {self.text!r}: {what} (at offset {self.pos}) is not supported")

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def take(self) -> str:
        if self.pos >= len(self.text):
            raise self.error("an unexpected end")
        self.pos += 1
        return self.text[self.pos - 1]

    # -- structure --------------------------------------------------------------------------------
    def alternation(self) -> list[list[_Item]]:
        sequences = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            sequences.append(self.sequence())
        return sequences

    def sequence(self) -> list[_Item]:
        items: list[_Item] = []
        while self.pos < len(self.text) and self.peek() not in "|)":
            atom = self.atom()
            bounds = self.quantifier()
            if bounds is not None:
                if isinstance(atom, str):
                    raise self.error(f"a quantifier on the anchor {atom!r}")
                atom = Repeat(atom, *bounds)
            items.append(atom)
        return items

    def quantifier(self) -> tuple[int, int | None] | None:
        ch = self.peek()
        bounds: tuple[int, int | None]
        if ch in ("*", "+", "?"):
            bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
            self.pos += 1
        elif ch == "{" and (m := _QUANTIFIER.match(self.text, self.pos)):
            lo, hi = int(m[1]), (int(m[3]) if m[3] else None) if m[2] else int(m[1])
            if hi is not None and hi < lo:
                raise self.error(f"the quantifier {m[0]} (its bounds are out of order)")
            bounds = (lo, hi)
            self.pos = m.end()
        else:
            return None
        if self.peek() == "?":  # lazy: another match order, the same language
            self.pos += 1
        elif self.peek() == "+":
            raise self.error("a possessive quantifier")
        elif self.peek() in ("*", "+", "?") or _QUANTIFIER.match(self.text, self.pos):
            raise self.error("a quantifier on a quantifier")
        return bounds

    def atom(self) -> _Item:
        start = self.pos
        ch = self.take()
        if ch == "(":
            return self.group()
        if ch == "[":
            return _chars(self.char_class())
        if ch == ".":
            return _chars(dot())
        if ch in (_START, _END):
            return ch
        if ch == "\\":
            return _chars(self.escape(in_class=False))
        self.pos = start
        if ch in "*+?" or _QUANTIFIER.match(self.text, self.pos):
            raise self.error(f"a quantifier {ch!r} with nothing to repeat")
        if self.peek(2) == "{,":
            raise self.error("the quantifier {,n} (ECMA-262 reads it as text, Python's re as {0,n})")
        self.pos += 1
        return _chars(single(self.code(ch)))

    def group(self) -> Node:
        if self.peek() == "?":
            self.pos += 1
            self.group_kind()
        sequences = self.alternation()
        if self.peek() != ")":
            raise self.error("a group without its ')'")
        self.pos += 1
        if any(isinstance(i, str) for items in sequences for i in items):
            raise self.error("an anchor (^ or $) inside a group")
        seqs = [Seq(tuple(i for i in items if not isinstance(i, str))) for items in sequences]
        return seqs[0] if len(seqs) == 1 else Alt(tuple(seqs))

    def group_kind(self) -> None:
        """After "(?": accept a non-capturing or a named group; refuse anything else by name."""
        if self.peek() == ":":
            self.pos += 1
            return
        for prefix, name in _REFUSED_GROUPS:
            if self.text.startswith(prefix, self.pos):
                raise self.error(name)
        named = re.compile(r"P?<[A-Za-z_$][A-Za-z0-9_$]*>").match(self.text, self.pos)
        if named:
            self.pos = named.end()
            return
        raise self.error("inline flags or the group extension (?" + self.peek())

    # -- characters -------------------------------------------------------------------------------
    def code(self, ch: str) -> int:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise self.error("a surrogate code point")
        return ord(ch)

    def escape(self, in_class: bool) -> CharSet:
        ch = self.take()
        if ch in "dDwWsS":
            return shorthand(ch)
        if ch in _SIMPLE_ESCAPES:
            return single(_SIMPLE_ESCAPES[ch])
        if ch == "b":
            if in_class:
                return single(0x08)
            raise self.error("the word boundary \\b")
        if ch == "0":
            if self.peek().isdigit():
                raise self.error("an octal escape")
            return single(0)
        if ch.isdigit():
            raise self.error(f"the backreference \\{ch}")
        if ch in "xu":
            return single(self.hex_escape(ch))
        if ch in _REFUSED_ESCAPES:
            raise self.error(_REFUSED_ESCAPES[ch])
        if ch.isascii() and ch.isalnum():
            raise self.error(f"the escape \\{ch}")
        return single(self.code(ch))  # an escaped symbol stands for itself

    def hex_escape(self, kind: str) -> int:
        digits = 2 if kind == "x" else 4
        text = self.peek(digits)
        if self.peek() == "{":
            raise self.error("the code point escape \\u{...}")
        if len(text) != digits or not all(c in "0123456789abcdefABCDEF" for c in text):
            raise self.error(f"\\{kind} without {digits} hex digits")
        self.pos += digits
        code = int(text, 16)
        if 0xD800 <= code <= 0xDFFF:
            raise self.error(f"the surrogate escape \\u{text}")
        return code

    def char_class(self) -> CharSet:
        negate = self.peek() == "^"
        self.pos += negate
        if self.peek() == "]":
            raise self.error("a class that starts with ']' (ECMA-262 reads [] as empty, Python's re as a literal ']')")
        items: list[CharSet] = []
        while self.peek() != "]":
            if self.pos >= len(self.text):
                raise self.error("a class without its ']'")
            first = self.class_atom()
            if self.peek() == "-" and self.peek(2) not in ("-]", "-"):
                self.pos += 1
                lo, hi = _lone(first), _lone(self.class_atom())
                if lo is None or hi is None:
                    raise self.error("a class range with a class escape at one end")
                if hi < lo:
                    raise self.error("a class range out of order")
                items.append(CharSet(((lo, hi),), ((lo, hi),)))
            else:
                items.append(first)
        self.pos += 1
        found = CharSet(union(*(i.under for i in items)), union(*(i.over for i in items)))
        return found.negated() if negate else found

    def class_atom(self) -> CharSet:
        ch = self.take()
        return self.escape(in_class=True) if ch == "\\" else single(self.code(ch))


def _lone(found: CharSet) -> int | None:
    """The code point of a class member that is one character."""
    (lo, hi), *rest = found.under or ((0, -1),)
    return lo if lo == hi and not rest and found.under == found.over else None
