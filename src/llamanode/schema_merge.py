"""JSON Schema algebra for the grammar compiler: allOf as one merged schema, the types a schema
admits, and whether two oneOf branches can never match the same document.

Merging follows JSON Schema semantics (every branch applies); what cannot be merged exactly
raises GrammarError naming the keyword, and a merge nothing can satisfy raises Unsatisfiable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import GrammarError
from .integer_range import BOUND_KEYWORDS
from .string_formats import FORMAT_PATTERNS

__all__ = [
    "ANNOTATIONS",
    "TYPES",
    "Unsatisfiable",
    "all_of",
    "drop_annotations",
    "fits",
    "provably_disjoint",
    "schema_types",
]

Resolve = Callable[[str], object]
ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_CONTAINERS = ("$defs", "definitions")  # hold schemas for $ref; they constrain nothing themselves
_IMPLIED = {  # the type a keyword implies when "type" is absent (the grammar then generates only that type)
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": set(BOUND_KEYWORDS),
}
_MAX_DEPTH = 32


class Unsatisfiable(GrammarError):
    """No document matches: e.g. allOf of a string and an integer."""


def drop_annotations(schema: Mapping[str, Any]) -> dict[str, Any]:
    """schema without annotations, $defs, and a `format` the grammar does not enforce (an annotation too)."""
    return {k: v for k, v in schema.items() if k not in ANNOTATIONS and k not in _CONTAINERS and not _noted(k, v)}


def _noted(key: str, value: object) -> bool:
    return key == "format" and isinstance(value, str) and value not in FORMAT_PATTERNS


def schema_types(schema: Mapping[str, Any], path: str) -> list[str] | None:
    """The types to generate: "type" (a name or a list), else the types the keywords imply; None: any."""
    declared = schema.get("type")
    if declared is None:
        return [kind for kind, keys in _IMPLIED.items() if keys & schema.keys()] or None
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise GrammarError(f"{path}: type must be a type name or a non-empty array of them")
    for name in names:
        if name not in TYPES:
            raise GrammarError(f"{path}: unknown type {name!r}")
    if "number" in names:  # integers are numbers: one rule, not two ambiguous ones
        names = [n for n in names if n != "integer"]
    return list(dict.fromkeys(names))


def fits(value: object, types: Sequence[str]) -> bool:
    """Whether a JSON value has one of the types."""
    if value is None:
        return "null" in types
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return "integer" in types or "number" in types
    if isinstance(value, float):
        return "number" in types or ("integer" in types and value.is_integer())
    kinds: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return kinds.get(type(value), "") in types


def _canon(value: object) -> str:
    """Equal JSON values (1 and 1.0 included), equal text."""

    def norm(v: object) -> object:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(norm(value), sort_keys=True)


def all_of(schemas: Sequence[object], resolve: Resolve, path: str, depth: int = 0) -> dict[str, Any]:
    """One schema that every one of schemas' documents must match, without top-level $ref or allOf."""
    merged: dict[str, Any] = {}
    for schema in schemas:
        merged = _merge(merged, _flatten(schema, resolve, path, depth), resolve, path, depth)
    return merged


def _flatten(schema: object, resolve: Resolve, path: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise GrammarError(f"{path}: allOf/$ref nested too deep (a recursive $ref under allOf is not supported)")
    if schema is True:
        return {}
    if schema is False:
        raise Unsatisfiable(f"{path}: schema false admits nothing")
    if not isinstance(schema, Mapping):
        raise GrammarError(f"{path}: a schema must be an object or a boolean, got {schema!r}")
    core = drop_annotations(schema)
    parts: list[object] = []
    if "$ref" in core:
        if not isinstance(core["$ref"], str):
            raise GrammarError(f"{path}: $ref must be a string")
        parts.append(resolve(core["$ref"]))
    if "allOf" in core:
        if not isinstance(core["allOf"], list) or not core["allOf"]:
            raise GrammarError(f"{path}: allOf must be a non-empty array")
        parts.extend(core["allOf"])
    flat = {k: v for k, v in core.items() if k not in ("$ref", "allOf", "const")}
    if "const" in core:
        flat = _merge(flat, {"enum": [core["const"]]}, resolve, path, depth)
    for part in parts:
        flat = _merge(flat, _flatten(part, resolve, path, depth + 1), resolve, path, depth + 1)
    return flat


def _merge(a: dict[str, Any], b: dict[str, Any], resolve: Resolve, path: str, depth: int) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key in ("properties", "required", "additionalProperties"):
            continue
        out[key] = value if key not in out or out[key] == value else _meet(key, out[key], value, resolve, path, depth)
    out.update(_merge_objects(a, b, resolve, path, depth))
    return out


def _meet(key: str, a: Any, b: Any, resolve: Resolve, path: str, depth: int) -> Any:
    if key == "type":
        both = _with_integers(a, path) & _with_integers(b, path)
        if not both:
            raise Unsatisfiable(f"{path}: allOf of types {a!r} and {b!r} admits nothing")
        return sorted(both)
    if key == "enum":
        kept = [v for v in a if _canon(v) in {_canon(w) for w in b}]
        if not kept:
            raise Unsatisfiable(f"{path}: allOf of enums with no common value")
        return kept
    if key in ("minLength", "minItems", "minimum", "exclusiveMinimum"):
        return max(a, b)
    if key in ("maxLength", "maxItems", "maximum", "exclusiveMaximum"):
        return min(a, b)
    if key in ("items", "additionalItems"):
        return False if a is False or b is False else all_of([a, b], resolve, path, depth + 1)
    raise GrammarError(f"{path}: allOf with different {key!r} in two branches is not supported")


def _merge_objects(a: dict[str, Any], b: dict[str, Any], resolve: Resolve, path: str, depth: int) -> dict[str, Any]:
    """properties, required and additionalProperties of two branches that both apply."""
    keys = ("properties", "required", "additionalProperties")
    if not any(k in s for s in (a, b) for k in keys):
        return {}
    pa, pb = a.get("properties", {}), b.get("properties", {})
    xa, xb = a.get("additionalProperties"), b.get("additionalProperties")
    required = list(dict.fromkeys([*a.get("required", []), *b.get("required", [])]))
    props: dict[str, Any] = {}
    for name in dict.fromkeys([*pa, *pb]):
        sides = [pa.get(name, xa), pb.get(name, xb)]
        if any(s is False for s in sides):  # one branch forbids it
            if name in required:
                raise Unsatisfiable(f"{path}: allOf requires {name!r}, which another branch forbids")
            continue
        picked = list({id(s): s for s in sides if s is not None and s is not True}.values())
        props[name] = picked[0] if len(picked) == 1 else all_of(picked, resolve, path, depth + 1)
    out: dict[str, Any] = {"properties": props} if props or pa or pb else {}
    if required:
        out["required"] = required
    if xa is False or xb is False:
        out["additionalProperties"] = False
    elif isinstance(xa, Mapping) and isinstance(xb, Mapping):
        out["additionalProperties"] = all_of([xa, xb], resolve, path, depth + 1)
    elif isinstance(xa, Mapping) or isinstance(xb, Mapping):
        out["additionalProperties"] = xa if isinstance(xa, Mapping) else xb
    elif xa is True or xb is True:
        out["additionalProperties"] = True
    return out


def provably_disjoint(a: object, b: object, resolve: Resolve) -> bool:
    """True only when no document can match both schemas (by type, by value, or by a discriminator)."""
    try:
        fa, fb = _flatten(a, resolve, "#", 0), _flatten(b, resolve, "#", 0)
    except GrammarError:
        return False
    va, vb = fa.get("enum"), fb.get("enum")
    if isinstance(va, list) and isinstance(vb, list):
        return not {_canon(v) for v in va} & {_canon(v) for v in vb}
    ta, tb = _possible_types(fa), _possible_types(fb)
    if isinstance(va, list):
        return not any(fits(v, sorted(tb)) for v in va)
    if isinstance(vb, list):
        return not any(fits(v, sorted(ta)) for v in vb)
    if not ta & tb:
        return True
    if ta == tb == {"object"}:
        pa, pb = fa.get("properties", {}), fb.get("properties", {})
        shared = set(fa.get("required", [])) & set(fb.get("required", [])) & set(pa) & set(pb)
        return any(provably_disjoint(pa[name], pb[name], resolve) for name in shared)
    return False


def _with_integers(declared: object, path: str) -> set[str]:
    """The declared type names, with "integer" added where "number" admits integers."""
    names = set(schema_types({"type": declared}, path) or TYPES)
    return names | {"integer"} if "number" in names else names


def _possible_types(flat: Mapping[str, Any]) -> set[str]:
    if "anyOf" in flat or "oneOf" in flat:
        return set(TYPES)
    try:
        types = set(schema_types(flat, "#") or TYPES)
    except GrammarError:
        return set(TYPES)
    return types | {"integer"} if "number" in types else types
