"""Hypothesis strategies: JSON schemas of the kinds llamanode.grammar supports, each drawn together
with one valid instance in the form the grammar generates (properties in schema order)."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import reject
from hypothesis import strategies as st

from regex_patterns import OracleTimeout, pattern_and_match, within

Pair = tuple[dict[str, Any], Any]

FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
"""The formats the grammar enforces, checked as draft 2020-12 checks them (jsonschema's global
FormatChecker() reads "time" the draft-3 way); any other format is an annotation."""
FORMAT_CHECKER.checkers = {
    name: jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers[name]
    for name in ("date", "time", "date-time", "uuid")
}

NAMES = ("id", "name", "kind", "tags", "x", "y", "note", "a b", "é", 'q"t', "nam")
# no surrogates (not UTF-8) and no unassigned code points (llama.cpp's BPE tokenizer mangles them)
_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cn"))
_TEXT = st.text(_CHARS, max_size=6)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), _TEXT)
# the grammar's numbers: at most 16 integer digits and a two-digit exponent
_FLOATS = st.floats(-1e6, 1e6).filter(lambda f: f == 0 or abs(f) >= 1e-90)
_EXTRA_KEY = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=4)


@st.composite
def _string(draw: st.DrawFn) -> Pair:
    lo = draw(st.integers(0, 2))
    hi = draw(st.one_of(st.none(), st.integers(lo, lo + 8)))
    schema: dict[str, Any] = {"type": "string"}
    if lo:
        schema["minLength"] = lo
    if hi is not None:
        schema["maxLength"] = hi
    text = draw(st.text(_CHARS, min_size=lo, max_size=hi if hi is not None else lo + 5))
    return schema, text


@st.composite
def _time(draw: st.DrawFn) -> str:
    t = draw(st.times())
    fraction = draw(st.sampled_from(["", f".{t.microsecond:06d}", f".{t.microsecond // 1000:03d}", ".5"]))
    sign, hours, minutes = draw(st.sampled_from("+-")), draw(st.integers(0, 23)), draw(st.integers(0, 59))
    offset = draw(st.sampled_from(["Z", f"{sign}{hours:02d}:{minutes:02d}"]))
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}{fraction}{offset}"


@st.composite
def formatted(draw: st.DrawFn) -> Pair:
    """A string with an enforced format (or one that is an annotation) and a valid instance."""
    kind = draw(st.sampled_from(["date", "time", "date-time", "uuid", "email"]))
    if kind == "date":
        value = draw(st.dates()).isoformat()
    elif kind == "time":
        value = draw(_time())
    elif kind == "date-time":
        value = f"{draw(st.dates()).isoformat()}T{draw(_time())}"
    elif kind == "uuid":
        value = str(draw(st.uuids()))
        value = value.upper() if draw(st.booleans()) else value
    else:
        value = draw(_TEXT)  # an annotation: any string
    return {"type": "string", "format": kind}, value


@st.composite
def _pattern(draw: st.DrawFn) -> Pair:
    pattern, value = draw(pattern_and_match())
    return {"type": "string", "pattern": pattern}, value


@st.composite
def _leaf(draw: st.DrawFn) -> Pair:
    kinds = [
        "string",
        "integer",
        "bounded",
        "number",
        "boolean",
        "null",
        "enum",
        "const",
        "nullable",
        "pattern",
        "format",
    ]
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        return draw(_string())
    if kind == "pattern":
        return draw(_pattern())
    if kind == "format":
        return draw(formatted())
    if kind == "integer":
        return {"type": "integer"}, draw(st.integers(-(10**15), 10**15))
    if kind == "bounded":
        lo, hi = sorted(draw(st.lists(st.integers(-300, 300), min_size=2, max_size=2)))
        return {"type": draw(st.sampled_from(["integer", "number"])), "minimum": lo, "maximum": hi}, (lo + hi) // 2
    if kind == "number":
        return {"type": "number"}, draw(st.one_of(st.integers(-999, 999), _FLOATS))
    if kind == "boolean":
        return {"type": "boolean"}, draw(st.booleans())
    if kind == "null":
        return {"type": "null"}, None
    if kind == "nullable":
        schema, text = draw(_string())
        return {**schema, "type": ["string", "null"]}, draw(st.sampled_from([text, None]))
    values = draw(st.lists(_SCALARS, min_size=1, max_size=4, unique_by=lambda v: (type(v), v)))
    if kind == "const":
        return {"const": values[0]}, values[0]
    return {"enum": values}, draw(st.sampled_from(values))


@st.composite
def _object(draw: st.DrawFn, depth: int, defs: dict[str, Any]) -> Pair:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True))
    children = [draw(schema_and_instance(depth - 1, defs)) for _ in names]
    required = [n for n in names if draw(st.booleans())]
    extra = draw(st.sampled_from(["absent", "false", "schema", "true"]))
    schema: dict[str, Any] = {"type": "object", "properties": {n: c[0] for n, c in zip(names, children, strict=True)}}
    if required:
        schema["required"] = required
    instance = {n: c[1] for n, c in zip(names, children, strict=True) if n in required or draw(st.booleans())}
    if extra == "false":
        schema["additionalProperties"] = False
    elif extra in ("schema", "true") or not names:
        value_schema, value = draw(_leaf())
        if extra == "schema":
            schema["additionalProperties"] = value_schema
        elif extra == "true":
            schema["additionalProperties"] = True
        for key in draw(st.lists(_EXTRA_KEY.filter(lambda k: k not in names), max_size=2, unique=True)):
            instance[key] = value if extra == "schema" else draw(_SCALARS)
    return schema, instance


@st.composite
def _array(draw: st.DrawFn, depth: int, defs: dict[str, Any]) -> Pair:
    if draw(st.booleans()):
        prefix = [draw(schema_and_instance(depth - 1, defs)) for _ in range(draw(st.integers(1, 2)))]
        return {"type": "array", "prefixItems": [p[0] for p in prefix], "items": False}, [p[1] for p in prefix]
    item_schema, first = draw(schema_and_instance(depth - 1, defs))
    lo = draw(st.integers(0, 2))
    hi = draw(st.one_of(st.none(), st.integers(max(lo, 1), lo + 3)))
    schema: dict[str, Any] = {"type": "array", "items": item_schema}
    if lo:
        schema["minItems"] = lo
    if hi is not None:
        schema["maxItems"] = hi
    count = draw(st.integers(lo, hi if hi is not None else lo + 2))
    return schema, [first] * count  # copies of one valid item: valid, and enough for the grammar's shape


_FAMILIES = {
    "string": lambda: _string(),
    "integer": lambda: st.tuples(st.just({"type": "integer"}), st.integers(-99, 99)),
    "boolean": lambda: st.tuples(st.just({"type": "boolean"}), st.booleans()),
    "null": lambda: st.just(({"type": "null"}, None)),
}


@st.composite
def schema_and_instance(draw: st.DrawFn, depth: int = 3, defs: dict[str, Any] | None = None) -> Pair:
    """A (schema, valid instance) pair; $defs gathered in defs (added at the top level)."""
    top = defs is None
    defs = {} if defs is None else defs
    kinds = ["leaf"] if depth <= 0 else ["leaf", "object", "object", "array", "anyOf", "oneOf", "allOf", "ref"]
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        pair = draw(_leaf())
    elif kind == "object":
        pair = draw(_object(depth, defs))
    elif kind == "array":
        pair = draw(_array(depth, defs))
    elif kind == "anyOf":
        options = [draw(schema_and_instance(depth - 1, defs)) for _ in range(2)]
        pair = {"anyOf": [o[0] for o in options]}, draw(st.sampled_from(options))[1]
    elif kind == "oneOf":
        families = draw(st.lists(st.sampled_from(sorted(_FAMILIES)), min_size=2, max_size=3, unique=True))
        options = [draw(_FAMILIES[f]()) for f in families]
        pair = {"oneOf": [o[0] for o in options]}, draw(st.sampled_from(options))[1]
    elif kind == "allOf":
        left, right = draw(_object(depth, defs)), draw(_object(depth, defs))
        clash = set(left[0]["properties"]) & set(right[0]["properties"])
        if clash or "additionalProperties" in left[0] or "additionalProperties" in right[0]:
            pair = left
        else:
            instance = {k: v for k, v in left[1].items() if k in left[0]["properties"]}
            instance.update({k: v for k, v in right[1].items() if k in right[0]["properties"]})
            pair = {"allOf": [left[0], right[0]]}, instance
    else:
        target, instance = draw(schema_and_instance(depth - 1, defs))
        name = f"d{len(defs)}"
        defs[name] = target
        pair = {"$ref": f"#/$defs/{name}"}, instance
    if top and defs:
        return {**pair[0], "$defs": dict(defs)}, pair[1]
    return pair


schemas = schema_and_instance().map(lambda pair: pair[0])


def validate_or_reject(instance: object, schema: dict, seconds: float = 2.0, **options: object) -> None:
    """jsonschema.validate (whose "pattern" is re.search), or discard the draw when it cannot answer in time."""
    try:
        with within(seconds):
            jsonschema.validate(instance, schema, **options)  # type: ignore[arg-type]
    except OracleTimeout:
        reject()
