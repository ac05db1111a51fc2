"""A JSON Schema `pattern` as GBNF for the JSON-encoded string it constrains (quotes included).

The grammar writes each character of the decoded string in JSON: raw where JSON allows it, `\\"`,
`\\\\` and control characters escaped (`\\/` is admitted for `/` too), never a surrogate, so every
admitted text is one `json.loads` accepts. Search semantics as in ECMA-262: a branch without `^` may
follow any characters, one without `$` may be followed by any. Unbounded repetitions stay unbounded,
as a string without maxLength does; with minLength/maxLength the bound goes into the one repetition
that can vary (GrammarError when the lengths vary in more than one place and do not already fit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import GrammarError
from .gbnf_text import char_class, literal, repeat
from .regex_chars import MAX_CODE, SCALARS, Ranges, intersect, union
from .regex_syntax import Alt, Branch, Chars, Node, Repeat, Seq, parse_pattern

__all__ = ["pattern_gbnf"]

Define = Callable[[str], str]  # a helper rule's body -> the new rule's name
_RAW: Ranges = ((0x20, 0x21), (0x23, 0x5B), (0x5D, 0xD7FF), (0xE000, MAX_CODE))  # written as themselves
_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_ANY = Repeat(Chars(SCALARS), 0, None)  # what an unanchored side admits
_MAX_BRANCHES = 256  # alternatives spelled out to fit minLength/maxLength


def pattern_gbnf(pattern: str, min_length: int, max_length: int | None, define: Define, what: str) -> str:
    """GBNF for the JSON strings (quotes included) whose value matches pattern and has a length within
    min_length..max_length; `what` names the keyword in errors."""
    branches = [s for s in (_sided(b) for b in parse_pattern(pattern)) if s is not None]
    if not branches:
        raise GrammarError(f"{what}: no string matches it")
    if min_length or max_length is not None:
        fitted: list[Seq] = []
        budget = [_MAX_BRANCHES]
        for branch in branches:
            fitted.extend(_fit(branch, min_length, max_length, what, budget))
        if not fitted:
            raise GrammarError(f"{what}: no match has a length within minLength {min_length}, maxLength {max_length}")
        branches = fitted
    body, _ = _Emitter(define).alternatives(branches)
    return f'"\\"" {body} "\\""' if body else '"\\"\\""'


# -- the tree -------------------------------------------------------------------------------------
def _sided(branch: Branch) -> Seq | None:
    """The branch with what its unanchored sides admit; None when it matches nothing."""
    items = _flat(branch.body.items)
    if not branch.start:
        items = (_ANY, *items)
    if not branch.end and (branch.start or items != (_ANY,)):
        items = (*items, _ANY)
    pruned = _prune(Seq(items))
    return None if pruned is None else Seq(_flat((pruned,)))


def _flat(items: Sequence[Node]) -> tuple[Node, ...]:
    """Nested sequences spliced into one."""
    return tuple(x for item in items for x in (_flat(item.items) if isinstance(item, Seq) else (item,)))


def _prune(node: Node) -> Node | None:
    """node without the parts that match nothing (an empty class); None when nothing is left."""
    if isinstance(node, Chars):
        return node if node.ranges else None
    if isinstance(node, Seq):
        items = [_prune(i) for i in node.items]
        return None if any(i is None for i in items) else Seq(tuple(i for i in items if i is not None))
    if isinstance(node, Alt):
        options = [o for o in (_prune(o) for o in node.options) if o is not None]
        return None if not options else options[0] if len(options) == 1 else Alt(tuple(options))
    item = _prune(node.item)
    if item is None or node.hi == 0:
        return Seq(()) if node.lo == 0 else None
    return Repeat(item, node.lo, node.hi)


def _span(node: Node) -> tuple[int, int | None]:
    """The fewest and most characters node matches (None: no limit)."""
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Seq):
        spans = [_span(i) for i in node.items]
        most = [b for _, b in spans]
        return sum(a for a, _ in spans), None if None in most else sum(b for b in most if b is not None)
    if isinstance(node, Alt):
        spans = [_span(o) for o in node.options]
        highs = [b for _, b in spans]
        return min(a for a, _ in spans), None if None in highs else max(b for b in highs if b is not None)
    lo, hi = _span(node.item)
    if node.hi == 0 or hi == 0:
        return 0, 0
    return node.lo * lo, None if node.hi is None or hi is None else node.hi * hi


def _nullable(node: Node) -> bool:
    if isinstance(node, Chars):
        return False
    if isinstance(node, Seq):
        return all(_nullable(i) for i in node.items)
    if isinstance(node, Alt):
        return any(_nullable(o) for o in node.options)
    return node.lo == 0 or _nullable(node.item)


def _nonempty(node: Node) -> Node | None:
    """node's language without the empty string (a repeated part must be: llama.cpp refuses a
    grammar where `x*` can loop without consuming, as left recursion); None when nothing is left."""
    if not _nullable(node):
        return node
    options: list[Node] = []
    if isinstance(node, Seq) and node.items:  # every item can be empty: the first nonempty one leads
        head, rest = _nonempty(node.items[0]), Seq(node.items[1:])
        options = [o for o in (Seq((head, *rest.items)) if head else None, _nonempty(rest)) if o is not None]
    elif isinstance(node, Alt):
        options = [o for o in map(_nonempty, node.options) if o is not None]
    elif isinstance(node, Repeat) and node.hi != 0:
        inner = _nonempty(node.item)  # x{lo,hi} with x nullable is x'{0,hi}: without "", x'{1,hi}
        return None if inner is None else Repeat(inner, 1, node.hi)
    return None if not options else options[0] if len(options) == 1 else Alt(tuple(options))


# -- minLength / maxLength ------------------------------------------------------------------------
def _fit(seq: Seq, lo: int, hi: int | None, what: str, budget: list[int]) -> list[Seq]:
    """seq limited to lengths lo..hi, exactly: unchanged when every match fits, one repetition
    bounded when only it varies, alternatives spelled out when they vary."""
    least, most = _span(seq)
    if (most is not None and most < lo) or (hi is not None and least > hi):
        return []
    if least >= lo and (hi is None or (most is not None and most <= hi)):
        return [seq]
    varying = [k for k, item in enumerate(seq.items) if _span(item)[0] != _span(item)[1]]
    choice = next((k for k in varying if isinstance(seq.items[k], Alt)), None)
    alt = seq.items[choice] if choice is not None else None
    if isinstance(alt, Alt) and choice is not None:
        budget[0] -= len(alt.options)
        if budget[0] < 0:
            raise GrammarError(f"{what} with minLength/maxLength: too many alternatives to spell out")
        out: list[Seq] = []
        for option in alt.options:
            out.extend(_fit(Seq(_flat((*seq.items[:choice], option, *seq.items[choice + 1 :]))), lo, hi, what, budget))
        return out
    item = seq.items[varying[0]]
    unit, unit_most = _span(item.item) if isinstance(item, Repeat) else (0, None)
    if len(varying) != 1 or not isinstance(item, Repeat) or unit != unit_most or unit == 0:
        raise GrammarError(
            f"{what} together with minLength/maxLength cannot be enforced exactly "
            "(its matches vary in length in more than one place)"
        )
    fixed = least - item.lo * unit
    count_lo = max(item.lo, -(-(lo - fixed) // unit))
    limits = [n for n in (item.hi, None if hi is None else (hi - fixed) // unit) if n is not None]
    count_hi = min(limits) if limits else None
    if count_hi is not None and count_lo > count_hi:
        return []
    k = varying[0]
    return [Seq((*seq.items[:k], Repeat(item.item, count_lo, count_hi), *seq.items[k + 1 :]))]


# -- GBNF -----------------------------------------------------------------------------------------
class _Emitter:
    """Writes trees as GBNF expressions; anything repeated that is not one symbol gets its own rule."""

    def __init__(self, define: Define) -> None:
        self.define = define
        self.named: dict[str, str] = {}

    def expr(self, node: Node) -> tuple[str, bool]:
        """The expression and whether it is one symbol (a literal, a class or a rule name)."""
        if isinstance(node, Chars):
            return self.chars(node.ranges)
        if isinstance(node, Seq):
            return self.sequence(node.items)
        if isinstance(node, Alt):
            return self.alternatives(node.options)
        item, lo = node.item, node.lo
        if _nullable(item):
            nonempty = _nonempty(item)
            if nonempty is None:
                return "", False
            item, lo = nonempty, 0
        return repeat(self.symbol(item), lo, node.hi), False

    def symbol(self, node: Node) -> str:
        text, one = self.expr(node)
        if not one and text not in self.named:
            self.named[text] = self.define(text)
        return text if one else self.named[text]

    def alternatives(self, options: Sequence[Node]) -> tuple[str, bool]:
        exprs = list(dict.fromkeys(self.expr(o) for o in options))
        filled = [e for e in exprs if e[0]]
        if len(filled) == len(exprs) == 1:
            return filled[0]
        if not filled:
            return "", False
        group = "( " + " | ".join(text for text, _ in filled) + " )"
        return group + ("?" if len(filled) < len(exprs) else ""), False

    def sequence(self, items: Sequence[Node]) -> tuple[str, bool]:
        parts: list[tuple[str, bool]] = []
        run = ""  # consecutive characters with one spelling each, written as one literal
        for item in items:
            spelled = _spelling(item)
            if spelled is not None:
                run += spelled
                continue
            if run:
                parts, run = [*parts, (literal(run), True)], ""
            text, one = self.expr(item)
            if text:
                parts.append((text, one))
        if run:
            parts.append((literal(run), True))
        return parts[0] if len(parts) == 1 else (" ".join(text for text, _ in parts), False)

    def chars(self, ranges: Ranges) -> tuple[str, bool]:
        """One character of ranges as JSON writes it: raw, or escaped where JSON must escape it."""
        parts: list[str] = []
        raw = intersect(ranges, _RAW)
        if raw:
            parts.append(literal(chr(raw[0][0])) if raw == ((raw[0][0], raw[0][0]),) else char_class(raw))
        escapes = [ch for code, ch in _ESCAPES.items() if _has(ranges, code)]
        controls = [code for code in range(0x20) if _has(ranges, code)]
        after = [char_class(union((ord(c), ord(c)) for c in escapes))] if escapes else []
        for high in (0, 1):
            lows = [code & 0xF for code in controls if code >> 4 == high]
            if lows:
                after.append(f'"u00{high}" {_hex_digits(lows)}')
        if after:
            parts.append(f'"\\\\" {after[0]}' if len(after) == 1 else '"\\\\" ( ' + " | ".join(after) + " )")
        if len(parts) == 1:
            return parts[0], bool(raw)
        return "( " + " | ".join(parts) + " )", False


def _spelling(node: Node) -> str | None:
    """The one way JSON writes a single-character node, if it has only one."""
    if not isinstance(node, Chars) or len(node.ranges) != 1 or node.ranges[0][0] != node.ranges[0][1]:
        return None
    code = node.ranges[0][0]
    if code in (0x22, 0x5C):
        return "\\" + chr(code)
    return chr(code) if _has(_RAW, code) and code != 0x2F else None


def _has(ranges: Ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def _hex_digits(values: Sequence[int]) -> str:
    """A class of the hex digits (either case) for nibble values."""
    codes = [ord(c) for v in values for c in {f"{v:x}", f"{v:X}"}]
    return char_class(union((c, c) for c in codes))
