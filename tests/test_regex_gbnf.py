"""JSON Schema `pattern` and `format` as grammars: the regex subset, search semantics, JSON escaping,
lengths, and the enforced formats. Grammars run on llama.cpp's own grammar engine (test_grammar.Engine)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from json_schemas import FORMAT_CHECKER, validate_or_reject
from llamanode import GrammarError
from llamanode.gbnf_text import repeat
from llamanode.grammar import json_schema_gbnf, schema_annotations
from llamanode.regex_syntax import Alt, Branch, Chars, Repeat, Seq, parse_pattern
from regex_patterns import POOL, OracleTimeout, pattern_and_match, within
from test_grammar import Engine, engine

__all__ = ["engine"]


def string(pattern: str, **lengths: int) -> str:
    return json_schema_gbnf({"type": "string", "pattern": pattern, **lengths})


def admitted(engine: Engine, gbnf: str, *values: str) -> list[bool]:
    """Whether the grammar admits each value written as json.dumps writes it."""
    return [engine.admits(gbnf, json.dumps(v, ensure_ascii=False)) for v in values]


# -- the syntax ---------------------------------------------------------------------------------


def test_a_pattern_parses_into_branches_with_their_anchors() -> None:
    (branch,) = parse_pattern("^wf_[a-c0-9-]{6,}$")
    letters = Chars(((0x2D, 0x2D), (0x30, 0x39), (0x61, 0x63)))
    expected = Seq((Chars(((0x77, 0x77),)), Chars(((0x66, 0x66),)), Chars(((0x5F, 0x5F),)), Repeat(letters, 6, None)))
    assert branch == Branch(expected, start=True, end=True)
    first, second = parse_pattern("^a|(?:b|c)??$")
    assert (first.start, first.end, second.start, second.end) == (True, False, False, True)
    assert second.body.items == (Repeat(Alt((Seq((Chars(((0x62, 0x62),)),)), Seq((Chars(((0x63, 0x63),)),)))), 0, 1),)


REFUSED = [
    ("(?=a)", "lookahead"), ("(?!a)", "negative lookahead"), ("(?<=a)b", "lookbehind"),
    ("(?<!a)b", "negative lookbehind"), ("(a)\\1", "backreference \\1"), ("(?<n>a)\\k<n>", "named backreference \\k"),
    ("(?P<n>a)(?P=n)", "named backreference (?P="), ("\\p{L}", "Unicode property escape \\p"),
    ("\\P{L}", "Unicode property escape \\P"), ("(?i)a", "inline flags"), ("(?i:a)", "inline flags"),
    ("a\\b", "word boundary"), ("\\Ba", "\\B"), ("a*+", "possessive"), ("a{,3}", "{,n}"),
    ("[]a]", "starts with ']'"), ("\\u{41}", "code point escape"), ("\\q", "escape \\q"), ("\\A", "escape \\A"),
    ("\\cA", "control escape"), ("\\01", "octal"), ("a^b", "anchor"), ("(^a)", "anchor (^ or $) inside a group"),
    ("^*", "quantifier on the anchor"), ("*a", "nothing to repeat"), ("{2}", "nothing to repeat"),
    ("a**", "quantifier on a quantifier"), ("a{2}{3}", "quantifier on a quantifier"), ("(a", "without its ')'"),
    ("a)", "unbalanced"), ("[a", "without its ']'"), ("[z-a]", "out of order"), ("[\\d-z]", "class escape at one end"),
    ("\\uD800", "surrogate"), ("a\\", "unexpected end"), ("\\x4", "without 2 hex digits"), ("a{3,2}", "out of order"),
    ("(?#c)", "comment"), ("\ud800", "surrogate"),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "named"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_the_subset_lacks_is_refused_by_name(pattern: str, named: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(named)) as caught:
        string(pattern)
    assert repr(pattern) in str(caught.value)


@pytest.mark.parametrize("pattern", ["a{", "a{x}", "}", "]", "a{1,2", "[a-]", "[-a]", "[\\]]", "(?<year>\\d{4})", "()"])
def test_what_both_engines_read_the_same_way_is_accepted(engine: Engine, pattern: str) -> None:
    assert engine.compiles(string(pattern))


# -- what the grammar admits ------------------------------------------------------------------


def test_the_pattern_of_a_workflow_id(engine: Engine) -> None:
    gbnf = string("^wf_[a-z0-9-]{6,}$")
    assert admitted(engine, gbnf, "wf_abc-12", "wf_" + "x" * 40) == [True, True]
    assert admitted(engine, gbnf, "wf_abc12", "wf_abc", "xwf_abcdef", "wf_abcdef ", "wf_ABCDEF", "") == [False] * 6


def test_unanchored_sides_admit_any_text_as_ecma_262_search_does(engine: Engine) -> None:
    cases = {"b": [True, True, True, True], "^b": [True, True, False, False], "b$": [True, False, True, False],
             "^b$": [True, False, False, False]}  # fmt: skip
    for pattern, expected in cases.items():
        assert admitted(engine, string(pattern), "b", "bc\n", 'a"\\b', "ab\u00e9") == expected, pattern
        assert admitted(engine, string(pattern), "", "a", "c") == [False] * 3
    assert admitted(engine, string("^a|b$"), "ax", "xb", "xa", "bx") == [True, True, False, False]


def test_characters_json_must_escape_come_escaped(engine: Engine) -> None:
    gbnf = string('^["\\\\/\\n\\x00-\\x02]+$')
    for text in (r'"\"\\/\/"', r'"\n\u000a\u000A\u0000\u0001\u0002"'):
        assert engine.admits(gbnf, text), text
    for text in ('"\n"', '"\x00"', r'"\u0003"', r'"\t"', r'"\x00"', r'"\u002f"', r'"\ud800\udc00"', '"a"'):
        assert not engine.admits(gbnf, text), text
    anything = string("^[^a]*$")
    assert engine.admits(anything, r'"\b\f\n\r\t\u001f\u0000\" \\ é 😀' + '\u2028"')
    assert not engine.admits(anything, r'"\u0061"') and not engine.admits(anything, '"\x1f"')


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("^\\d$", "7", ["\u0663", "a"]),  # U+0663 ARABIC-INDIC DIGIT THREE: a digit only to Python
        ("^\\D$", "a", ["\u0663", "7"]),
        ("^\\w$", "_", ["é", "-"]),  # é is a word character only to Python
        ("^\\W$", "-", ["é", "_"]),
        ("^\\s$", "\u00a0", ["\ufeff", "\x1c", "x"]),  # U+FEFF is space only to ECMA-262, U+001C only to Python
        ("^\\S$", "x", ["\ufeff", "\x1c", " "]),
        ("^[^\\d]$", "a", ["\u0663", "7"]),
        ("^[^\\D]$", "7", ["\u0663"]),
        ("^.$", "😀", ["\n", "\r", "\u2028"]),  # `.` is a code point, never a line break of either reading
    ],
)
def test_classes_admit_what_ecma_262_and_python_both_match(
    engine: Engine, pattern: str, yes: str, no: list[str]
) -> None:
    assert admitted(engine, string(pattern), yes, *no) == [True] + [False] * len(no)


def test_lazy_quantifiers_and_repeats_of_what_may_be_empty(engine: Engine) -> None:
    assert string("^a+?b*?c??d{2,3}?$") == string("^a+b*c?d{2,3}$")
    for pattern in ("^(a?)*$", "^(a*|b?)+$", "^(?:)*$", "^()+x$", "^(a?b?){2,}$", "^((a|)(b|))*$"):
        gbnf = string(pattern)
        assert engine.compiles(gbnf), pattern  # llama.cpp refuses x* when x can be empty (left recursion)
        for value in ("", "x", "ab", "aab", "ba", "c"):
            assert engine.admits(gbnf, json.dumps(value)) == bool(re.fullmatch(pattern[1:-1], value)), (pattern, value)


def test_lengths_go_into_the_one_repetition_that_varies(engine: Engine) -> None:
    gbnf = string("^[a-z]+$", maxLength=3)
    assert admitted(engine, gbnf, "a", "abc", "", "abcd") == [True, True, False, False]
    prefixed = string("^x", minLength=3, maxLength=4)  # the free tail is the one that varies
    assert admitted(engine, prefixed, "xab", "x\u00e9\n!", "xa", "xabcd", "ab") == [True, True, False, False, False]
    spelled = string("^(foo|barbaz)-\\d+$", maxLength=8)  # alternatives of different lengths, spelled out
    assert admitted(engine, spelled, "foo-1234", "barbaz-1", "barbaz-12", "foo-12345") == [True, True, False, False]
    assert string("^\\d{4}$", minLength=2, maxLength=10) == string("^\\d{4}$")  # every match fits already


@pytest.mark.parametrize(
    ("pattern", "lengths", "message"),
    [
        ("a", {"maxLength": 4}, "cannot be enforced exactly"),  # free text on both sides
        ("^(ab|c)+$", {"maxLength": 4}, "cannot be enforced exactly"),  # a repeated part of varying length
        ("^a{5}$", {"maxLength": 4}, "no match has a length"),
        ("^(a|b|c|d){1,9}(a|bb|ccc|dddd)(a|bb|ccc|dddd)(a|bb)(a|bb)(a|bb)(a|bb)(a|bb)$", {"maxLength": 14}, "too many"),
    ],
)
def test_lengths_that_cannot_be_enforced_exactly_are_refused(
    pattern: str, lengths: dict[str, int], message: str
) -> None:
    with pytest.raises(GrammarError, match=message):
        string(pattern, **lengths)


@pytest.mark.parametrize(("lo", "hi"), [(0, 2500), (1999, 2001), (2400, None), (4321, 4330)])
def test_counts_beyond_llama_cpp_repetition_limit_stay_exact(engine: Engine, lo: int, hi: int | None) -> None:
    """llama.cpp reads x{0,2500} as x*: maxLength 2500 admitted any length before."""
    gbnf = f'root ::= "<" {repeat("[a]", lo, hi)} ">"\n'
    for n in sorted({lo - 1, lo, lo + 1, *(() if hi is None else (hi - 1, hi, hi + 1)), (hi or lo) + 700}):
        if n >= 0:
            assert engine.admits(gbnf, "<" + "a" * n + ">") == (n >= lo and (hi is None or n <= hi)), n
    assert engine.admits(json_schema_gbnf({"type": "string", "maxLength": 2500}), '"' + "é" * 2500 + '"')
    assert not engine.admits(json_schema_gbnf({"type": "string", "maxLength": 2500}), '"' + "é" * 2501 + '"')


# -- format ------------------------------------------------------------------------------------


def test_format_without_type_constrains_strings_and_annotations_constrain_nothing(engine: Engine) -> None:
    date = json_schema_gbnf({"format": "date"})
    assert engine.admits(date, '"2024-02-29"') and not engine.admits(date, "1")
    assert json_schema_gbnf({"format": "email"}) == json_schema_gbnf({})
    assert json_schema_gbnf({"type": "integer", "format": "int64"}) == json_schema_gbnf({"type": "integer"})
    with pytest.raises(GrammarError, match="may overlap"):  # an annotation admits every value: oneOf overlaps
        json_schema_gbnf({"oneOf": [{"format": "email"}, {"type": "integer"}]})


def test_schema_annotations_name_the_formats_left_unenforced() -> None:
    schema = {
        "type": "object",
        "properties": {
            "site": {"type": "string", "format": "uri"},
            "format": {"type": "string", "format": "date"},
            "list": {"type": "array", "items": {"anyOf": [{"format": "email"}, {"type": "null"}]}},
            "kind": {"enum": [{"format": "x"}], "default": {"format": "y"}},
        },
    }
    assert schema_annotations(schema) == (
        "#/properties/site: format 'uri'",
        "#/properties/list/items/anyOf/0: format 'email'",
    )


_YEARS = st.one_of(st.integers(0, 9999), st.integers(0, 99).map(lambda century: century * 100))  # leap years
_DATE_PARTS = st.tuples(_YEARS, st.one_of(st.integers(0, 13), st.just(2)), st.one_of(st.integers(0, 32), st.just(29)))
_TIME_PARTS = st.tuples(
    st.integers(0, 25), st.integers(0, 61), st.integers(0, 61), st.sampled_from(["", ".5", ".123456", ".1234567891"]),
    st.sampled_from(["Z", "z", "+05:30", "-23:59", "+24:00", "+05:60", "", "+0530"]),
)  # fmt: skip
_ODD = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_ODD
@given(parts=_DATE_PARTS)
def test_dates_are_admitted_exactly_when_jsonschema_accepts_them(engine: Engine, parts: tuple[int, int, int]) -> None:
    value = "{:04d}-{:02d}-{:02d}".format(*parts)
    assert admitted(engine, json_schema_gbnf({"format": "date"}), value) == [FORMAT_CHECKER.conforms(value, "date")]


@_ODD
@given(parts=_TIME_PARTS, date=_DATE_PARTS, kind=st.sampled_from(["time", "date-time"]))
def test_times_admitted_are_valid_and_valid_ones_are_admitted(
    engine: Engine, parts: tuple[int, int, int, str, str], date: tuple[int, int, int], kind: str
) -> None:
    value = "{:02d}:{:02d}:{:02d}{}{}".format(*parts)
    if kind == "date-time":
        value = "{:04d}-{:02d}-{:02d}T".format(*date) + value
    valid = FORMAT_CHECKER.conforms(value, kind)
    written_as_we_write = len(parts[3]) <= 10 and "z" not in value  # at most 9 fraction digits, upper-case Z
    assert admitted(engine, json_schema_gbnf({"format": kind}), value) == [valid and written_as_we_write]


@_ODD
@given(groups=st.lists(st.text("0123456789abcdefABCDEFg", min_size=3, max_size=13), min_size=4, max_size=6))
def test_uuids_admitted_are_valid_and_valid_ones_are_admitted(engine: Engine, groups: list[str]) -> None:
    for value in ("-".join(groups), "-".join(g[:n] for g, n in zip(groups, (8, 4, 4, 4, 12), strict=False))):
        canonical = re.fullmatch("[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", value)  # UUID() takes more
        expected = FORMAT_CHECKER.conforms(value, "uuid") and bool(canonical)
        assert admitted(engine, json_schema_gbnf({"format": "uuid"}), value) == [expected]


# -- patterns from a generator of the subset ---------------------------------------------------

_PIECES = st.sampled_from([*POOL[:20], '"', "\\", "\\u00", "\\n", '\\"', "\n", "\x1f", "\\ud800", "é"])


def _pattern_property(engine: Engine, pair: tuple[str, str], edits: list[tuple[int, bool, str]]) -> None:
    """The matching string is admitted; whatever an edited text still admits parses and matches."""
    pattern, value = pair
    schema = {"type": "string", "pattern": pattern}
    gbnf = json_schema_gbnf(schema)
    text = json.dumps(value, ensure_ascii=False)
    assert engine.admits(gbnf, text), (pattern, text)
    for at, insert, piece in edits:
        at %= len(text) + 1
        text = text[:at] + piece + text[at:] if insert else text[:at] + text[at + len(piece) :]
    if engine.admits(gbnf, text):
        validate_or_reject(json.loads(text), schema)


def test_the_oracle_gives_up_on_catastrophic_backtracking_instead_of_hanging() -> None:
    started = time.monotonic()
    with pytest.raises(OracleTimeout), within(0.3):
        re.search("((a*)*)*b", "a" * 40)  # ~2^40 paths in Python's backtracking re
    assert time.monotonic() - started < 2


_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), _PIECES), min_size=1, max_size=3)
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=120, suppress_health_check=_HEALTH)
@given(pair=pattern_and_match(), edits=_EDITS)
def test_generated_patterns_admit_their_matches_and_only_matches(
    engine: Engine, pair: tuple[str, str], edits: list[tuple[int, bool, str]]
) -> None:
    _pattern_property(engine, pair, edits)


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=_HEALTH)
@given(pair=pattern_and_match(), edits=_EDITS)
def test_generated_patterns_admit_their_matches_and_only_matches_many(
    engine: Engine, pair: tuple[str, str], edits: list[tuple[int, bool, str]]
) -> None:
    _pattern_property(engine, pair, edits)
