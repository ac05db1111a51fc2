"""llamanode.grammar: JSON Schema to GBNF. Grammars are checked with llama.cpp's own grammar engine
(the real vocabulary): a text is admitted when every one of its tokens and then end-of-generation is."""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from json_schemas import FORMAT_CHECKER, NAMES, schema_and_instance, validate_or_reject
from llamanode import GrammarError, KVSession
from llamanode.backends.llamacpp.native import lib
from llamanode.grammar import JSON_OBJECT_GBNF, MAX_WS, json_schema_gbnf, schema_rules


class Engine:
    """llama.cpp's grammar sampler over the default model's vocabulary."""

    def __init__(self, session: KVSession) -> None:
        self.session = session
        self.vocab = session._ctx._model.vocab  # type: ignore[attr-defined]
        self.eos = lib().llama_vocab_eos(self.vocab)

    def compiles(self, gbnf: str) -> bool:
        sampler = lib().llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        if sampler:
            lib().llama_sampler_free(sampler)
        return bool(sampler)

    def admits(self, gbnf: str, text: str) -> bool:
        L = lib()
        sampler = L.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        assert sampler, f"grammar does not compile:\n{gbnf}"
        tokens = self.session.tokenize(text)
        assert b"".join(map(self.session._ctx.token_bytes, tokens)) == text.encode(), f"{text!r} does not tokenize"
        try:
            for token in [*tokens, self.eos]:
                data = (L.llama_token_data * 1)(L.llama_token_data(token, 0.0, 0.0))
                candidates = L.llama_token_data_array(data, 1, -1, False)
                L.llama_sampler_apply(sampler, ctypes.byref(candidates))
                if math.isinf(data[0].logit):
                    return False
                if token != self.eos:
                    L.llama_sampler_accept(sampler, token)  # only ever an admitted token: a rejected one aborts
            return True
        finally:
            L.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def engine(model_keeper: KVSession) -> Iterator[Engine]:
    yield Engine(model_keeper)


# -- the interface --------------------------------------------------------------------------


def test_helper_rules_live_under_the_root_name_so_schemas_combine(engine: Engine) -> None:
    person = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    numbers = {"type": "array", "items": {"type": "number"}}
    rules = schema_rules(person, "tool-a") + schema_rules(numbers, "tool-a-b")
    names = re.findall(r"^([A-Za-z0-9-]+) ::=", rules, re.M)
    assert len(names) == len(set(names)), "no rule is defined twice"
    assert all(n in ("tool-a", "tool-a-b") or n.startswith(("tool-a--", "tool-a-b--")) for n in names)
    grammar = "root ::= tool-a | tool-a-b\n" + rules
    assert engine.admits(grammar, '{"name": "x"}') and engine.admits(grammar, "[1, 2.5]")
    assert not engine.admits(grammar, '{"other": 1}')


@pytest.mark.parametrize("root", ["", "a--b", "a_b", "-a", "a-", "a b"])
def test_a_root_name_that_could_collide_is_refused(root: str) -> None:
    with pytest.raises(GrammarError, match="rule name"):
        schema_rules({"type": "string"}, root)


def test_json_object_admits_any_object_and_nothing_else(engine: Engine) -> None:
    assert engine.admits(JSON_OBJECT_GBNF, '{"a": [1, {"b": null}], "c": "d", "a": true}')
    assert engine.admits(JSON_OBJECT_GBNF, "{}")
    for text in ("[]", '"x"', "1", '{"a": 1,}', "{'a': 1}", '{"a" 1}'):
        assert not engine.admits(JSON_OBJECT_GBNF, text), text


# -- strings are what json.loads accepts ------------------------------------------------------

STRING = json_schema_gbnf({"type": "string"})


@pytest.mark.parametrize(
    "text",
    ['""', '"plain"', r'"a\nb\t\"q\" \\ \/ \b\f\r"', r'"\u00e9\u20AC"', '"é 😀 中文"', '"퀀 한국어 힣"', '"\x7f"'],
)
def test_strings_admit_every_valid_escape_and_raw_unicode(engine: Engine, text: str) -> None:
    json.loads(text)
    assert engine.admits(STRING, text)


@pytest.mark.parametrize(
    "text",
    ['"a\nb"', '"tab\there"', '"\x00"', '"\x1f"', r'"\x41"', r'"\q"', r'"\u12"', r'"\ud800"', r'"\uDC00"', '"open'],
    ids=["newline", "tab", "nul", "unit-sep", "hex-escape", "bad-escape", "short-u", "surrogate", "low-surr", "open"],
)
def test_strings_refuse_raw_control_characters_and_bad_escapes(engine: Engine, text: str) -> None:
    assert not engine.admits(STRING, text)


def test_string_lengths_count_characters_not_bytes_or_escapes(engine: Engine) -> None:
    gbnf = json_schema_gbnf({"type": "string", "minLength": 2, "maxLength": 3})
    assert engine.admits(gbnf, '"é😀"') and engine.admits(gbnf, r'"\n\u00e9x"')
    assert not engine.admits(gbnf, '"a"') and not engine.admits(gbnf, '"abcd"')
    assert engine.admits(json_schema_gbnf({"type": "string", "maxLength": 0}), '""')


def test_whitespace_is_bounded(engine: Engine) -> None:
    gbnf = json_schema_gbnf({"type": "array", "items": {"type": "integer"}})
    assert engine.admits(gbnf, "[" + " " * MAX_WS + "1]")
    assert not engine.admits(gbnf, "[" + " " * (MAX_WS + 1) + "1]")
    assert not engine.admits(gbnf, " [1]") and not engine.admits(gbnf, "[1] ")


def test_numbers_stay_finite_and_parseable(engine: Engine) -> None:
    gbnf = json_schema_gbnf({"type": "number"})
    for text in ("0", "-0", "12.5", "1e99", "-3.25E-7", "9999999999999999"):
        assert engine.admits(gbnf, text), text
    for text in ("01", "1.", ".5", "1e999", "+1", "NaN", "Infinity", "1" * 17):
        assert not engine.admits(gbnf, text), text
    assert not engine.admits(json_schema_gbnf({"type": "integer"}), "1.0")


# -- objects, arrays, combinators --------------------------------------------------------------


def test_properties_in_order_required_present_others_optional(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "required": ["b"],
    }
    gbnf = json_schema_gbnf(schema)
    for text in ('{"b": ""}', '{"a": 1, "b": "x"}', '{"b": "x", "c": true}', '{"a":1,"b":"","c":false}'):
        assert engine.admits(gbnf, text), text
    for text in ("{}", '{"a": 1}', '{"b": "x", "d": 1}', '{"b": "x", "b": "y"}', '{"b": "x",}'):
        assert not engine.admits(gbnf, text), text


def test_additional_properties_never_repeat_a_declared_name(engine: Engine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": {"type": "integer"}}
    gbnf = json_schema_gbnf(schema)
    for text in ('{"name": "a", "nam": 1, "names": 2, "x": 3}', '{"n": 1}', "{}", '{"": 5}'):
        assert engine.admits(gbnf, text), text
    for text in ('{"name": "a", "name": 1}', '{"name": 1}', '{"x": "s"}'):
        assert not engine.admits(gbnf, text), text


def test_array_bounds_and_tuples(engine: Engine) -> None:
    bounded = json_schema_gbnf({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2})
    assert engine.admits(bounded, "[1]") and engine.admits(bounded, "[1, 2]")
    assert not engine.admits(bounded, "[]") and not engine.admits(bounded, "[1, 2, 3]")
    pair = json_schema_gbnf({"type": "array", "prefixItems": [{"type": "string"}, {"type": "null"}], "items": False})
    assert engine.admits(pair, '["a", null]') and not engine.admits(pair, '["a", null, 1]')


def test_recursive_refs_and_discriminated_one_of(engine: Engine) -> None:
    node = {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
    }
    gbnf = json_schema_gbnf({**node, "required": ["v", "next"]})
    assert engine.admits(gbnf, '{"v": 1, "next": {"v": 2, "next": null}}')
    one_of = {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
        ]
    }
    assert engine.admits(json_schema_gbnf(one_of), '{"kind": "b"}')


def test_all_of_merges_objects_and_respects_closed_branches(engine: Engine) -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "maxLength": 2}, "a": {"type": "number"}}},
        ]
    }
    gbnf = json_schema_gbnf(schema)
    assert engine.admits(gbnf, '{"a": 1, "b": "xy"}') and not engine.admits(gbnf, '{"a": 1.5}')
    closed = {"allOf": [{"properties": {"a": {}}, "additionalProperties": False}, {"properties": {"b": {}}}]}
    assert not engine.admits(json_schema_gbnf(closed), '{"a": 1, "b": 2}')


BOUNDS = st.one_of(st.none(), st.integers(-1200, 1200))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lo=BOUNDS, hi=BOUNDS, exclusive=st.booleans())
def test_integer_bounds_admit_exactly_the_integers_in_range(
    engine: Engine, lo: int | None, hi: int | None, exclusive: bool
) -> None:
    assume(lo is None or hi is None or lo <= hi)
    schema: dict[str, object] = {"type": "integer"}
    if lo is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = lo - 1 if exclusive else lo
    if hi is not None:
        schema["maximum"] = hi
    gbnf = json_schema_gbnf(schema)
    for n in sorted(
        {-1300, -1000, -101, -100, -99, -10, -9, -1, 0, 1, 9, 10, 99, 100, 101, 1000, 1300}
        | {v + d for v in (lo, hi) if v is not None for d in (-1, 0, 1)}
    ):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert engine.admits(gbnf, str(n)) == inside, (n, schema)
    assert not engine.admits(gbnf, "007")
    assert (lo is None and hi is None) or not engine.admits(gbnf, "-0")


def test_a_bounded_number_is_an_integer_within_the_bounds(engine: Engine) -> None:
    gbnf = json_schema_gbnf({"type": "number", "exclusiveMinimum": 0.5, "maximum": 150.9})
    assert engine.admits(gbnf, "1") and engine.admits(gbnf, "150")
    assert not engine.admits(gbnf, "0") and not engine.admits(gbnf, "151") and not engine.admits(gbnf, "1.5")


UNSUPPORTED = [
    ({"type": "string", "pattern": "^(?=a)"}, "lookahead"),
    ({"type": "string", "pattern": "a", "format": "date"}, "pattern together with format"),
    ({"type": "string", "pattern": "a", "maxLength": 4}, "cannot be enforced exactly"),
    ({"type": "string", "format": "date", "maxLength": 4}, "no match has a length"),
    ({"type": "string", "format": 7}, "format must be a string"),
    ({"type": "string", "pattern": ["a"]}, "pattern must be a string"),
    ({"type": "string", "pattern": "[^\\s\\S]"}, "no string matches"),
    ({"allOf": [{"pattern": "^a"}, {"pattern": "b$"}]}, "different 'pattern'"),
    ({"type": "number", "minimum": 0.2, "maximum": 0.8}, "no integer lies within"),
    ({"type": "integer", "minimum": 0, "exclusiveMinimum": True}, "exclusiveMinimum"),
    ({"type": "integer", "minimum": 10**17}, "16 digits"),
    ({"type": "number", "multipleOf": 2}, "multipleOf"),
    ({"type": "object", "minProperties": 1}, "minProperties"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "null"}}, "not"),
    ({"if": {}, "then": {}}, "if"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ({"properties": {"a": {"$id": "x", "type": "string"}}}, "$id"),
    ({"$ref": "https://example.com/schema.json"}, "only local"),
    ({"$ref": "#/$defs/missing"}, "points nowhere"),
    ({"$ref": "#"}, "refers to itself"),
    ({"type": "strung"}, "unknown type"),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "may overlap"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "admits nothing"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "maxLength"),
    ({"enum": []}, "enum"),
    ({"type": "integer", "enum": ["a"]}, "no enum"),
    ({"enum": ["ab", "c"], "maxLength": 1}, "maxLength"),
    ({"const": float("nan")}, "not a JSON value"),
    ({"enum": ["ok", "\ud800"]}, "not a JSON value"),
    ({"type": "object", "properties": {"\udfff": {}}}, "not a JSON value"),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": False, "required": ["b"]}, "forbidden"),
]


@pytest.mark.parametrize(("schema", "named"), UNSUPPORTED, ids=[u[1] for u in UNSUPPORTED])
def test_what_cannot_be_honoured_is_a_grammar_error_naming_it(schema: dict[str, object], named: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(named)):
        json_schema_gbnf(schema)


def test_const_and_enum_together_admit_only_their_common_value(engine: Engine) -> None:
    gbnf = json_schema_gbnf({"const": "b", "enum": ["a", "b"]})
    assert engine.admits(gbnf, '"b"') and not engine.admits(gbnf, '"a"')
    with pytest.raises(GrammarError, match="no common value"):
        json_schema_gbnf({"const": "c", "enum": ["a", "b"]})


def test_annotations_are_ignored() -> None:
    plain = json_schema_gbnf({"type": "string"})
    annotated = {"type": "string", "title": "T", "description": "d", "default": "x", "examples": ["y"], "$comment": "c"}
    assert json_schema_gbnf({"$schema": "https://json-schema.org/draft/2020-12/schema", **annotated}) == plain


# -- properties over generated schemas ----------------------------------------------------------

_PROPERTY = settings(
    max_examples=max(200, settings.default.max_examples),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_PROPERTY
@given(pair=schema_and_instance(), pretty=st.booleans())
def test_valid_documents_in_schema_order_are_admitted(engine: Engine, pair: tuple[dict, object], pretty: bool) -> None:
    schema, instance = pair
    validate_or_reject(instance, schema, format_checker=FORMAT_CHECKER)  # the strategy's own promise
    text = json.dumps(instance, ensure_ascii=False, indent=2 if pretty else None)
    assume(not pretty or max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0) <= MAX_WS)
    assert engine.admits(json_schema_gbnf(schema), text)


_TRICKY = st.sampled_from([*'"\\{}[],: \n\t\x00\x1fa0-.e', "\\u", "\\ud800", "null", '"x":', ', "y": 1'])


@_PROPERTY
@given(pair=schema_and_instance(), edits=st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), _TRICKY), max_size=3))
def test_every_admitted_text_parses_and_validates(
    engine: Engine, pair: tuple[dict, object], edits: list[tuple[int, bool, str]]
) -> None:
    """Mutate a valid document (insertions, deletions): whatever the grammar still admits is valid."""
    schema, instance = pair
    text = json.dumps(instance, ensure_ascii=False)
    for at, insert, piece in edits:
        at %= len(text) + 1
        text = text[:at] + piece + text[at:] if insert else text[:at] + text[at + len(piece) :]
    if engine.admits(json_schema_gbnf(schema), text):
        validate_or_reject(json.loads(text), schema, format_checker=FORMAT_CHECKER)


def test_names_used_by_the_strategies_cover_escaping_and_prefixes() -> None:
    assert any('"' in n for n in NAMES) and any(a != b and b.startswith(a) for a in NAMES for b in NAMES)
