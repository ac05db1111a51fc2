"""JSON Schema to GBNF, the grammar format of llama.cpp's grammar sampler.

Written here, not taken from llama-cpp-python: the binding's `json_schema_to_gbnf` is a port whose
string rule admits raw control characters (so constrained output can fail `json.loads`), and it
lives inside the native package, which the core may not import.

Every document a grammar from here admits parses with `json.loads` and validates against its
schema. It may admit fewer documents than the schema (properties come in schema order; an object
with `properties` gets no others unless `additionalProperties` asks for them; a number with
minimum/maximum is an integer within them; whitespace is bounded), never more. A keyword that
would need more raises GrammarError naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from .errors import GrammarError
from .gbnf_text import class_char, literal, repeat
from .integer_range import BOUND_KEYWORDS, integer_bounds, integer_range_gbnf
from .regex_gbnf import pattern_gbnf
from .schema_merge import (
    ANNOTATIONS,
    Unsatisfiable,
    all_of,
    drop_annotations,
    fits,
    provably_disjoint,
    schema_types,
)
from .string_formats import FORMAT_PATTERNS, schema_annotations

__all__ = ["JSON_OBJECT_GBNF", "json_schema_gbnf", "schema_annotations", "schema_rules"]

MAX_WS = 20  # whitespace characters between two tokens of JSON: enough to indent, never an endless loop
_RULE_NAME = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\Z")  # no "--": helper names cannot collide across roots
_KEYWORDS = ANNOTATIONS | {
    *("type", "enum", "const", "$ref", "$defs", "definitions", "allOf", "anyOf", "oneOf"),
    *("properties", "required", "additionalProperties", "minLength", "maxLength", "pattern", "format"),
    *("items", "prefixItems", "additionalItems", "minItems", "maxItems"),
    *BOUND_KEYWORDS,
}

# JSON's primitives; "@" stands for "<root>--". Strings hold no raw control characters and no
# surrogates, and \u escapes name no surrogate, so each unit is one character of the parsed string.
# U+D000-U+D7FF has its own class: llama.cpp refuses a token ending inside a character whose possible
# code points (ED xx: U+D000-U+DFFF) touch a negated class's excluded range.
_RAW_EXCLUDED = r'"\\\x00-\x1F\uD000-\uDFFF'
_PRIMITIVES = {
    "ws": f"[ \\t\\n]{{0,{MAX_WS}}}",
    "raw": f"[^{_RAW_EXCLUDED}] | [\\uD000-\\uD7FF]",
    "char": r'@raw | "\\" ( ["\\/bfnrt] | "u" @hex4 )',
    "hex4": r"[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}",
    "string": r'"\"" @char* "\""',
    # digits bounded: Python's int() refuses more than 4300 digits, and two exponent digits keep
    # every number finite (1e999 would parse as inf)
    "integer": r'"-"? ( "0" | [1-9] [0-9]{0,15} )',
    "number": r'@integer ( "." [0-9]{1,32} )? ( [eE] [-+]? [0-9]{1,2} )?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"@object | @array | @string | @number | @boolean | @null",
    "object": r'"{" @ws ( @member ( "," @ws @member )* )? "}"',
    "member": r'@string @ws ":" @ws @value @ws',
    "array": r'"[" @ws ( @value @ws ( "," @ws @value @ws )* )? "]"',
}


def json_schema_gbnf(schema: Mapping[str, Any]) -> str:
    """A complete grammar for documents valid against schema; the start rule is `root`."""
    return schema_rules(schema, "root")


def schema_rules(schema: Mapping[str, Any], root: str) -> str:
    """The rules for one schema: the top rule is `root`, every helper rule starts with `root + "--"`.

    Rules of several roots can be joined into one grammar; roots must not contain "--".
    """
    if not isinstance(root, str) or not _RULE_NAME.match(root):
        raise GrammarError(f"rule name {root!r} must be letters and digits joined by single dashes")
    if not isinstance(schema, Mapping):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    document = {k: v for k, v in schema.items() if k != "$id"}  # an $id at the top names nothing we use
    builder = _Builder(document, root)
    top = builder.expr(document, "#")
    return "".join(f"{name} ::= {body}\n" for name, body in {root: top, **builder.rules}.items())


def _json_text(value: object, where: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")  # a lone surrogate passes json.dumps but is no text a model can write
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"{where}: {value!r} is not a JSON value ({exc})") from exc
    return text


def _repeat(lo: int, hi: int | None) -> str:
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    return "?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _count(schema: Mapping[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GrammarError(f"{path}: {key} must be a non-negative integer, got {value!r}")
    return value


class _Builder:
    """Collects the helper rules of one root while turning schemas into GBNF expressions."""

    def __init__(self, document: Mapping[str, Any], root: str) -> None:
        self.document = document
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    # -- rules ----------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new rule `<root>--<hint>-<n>`: the dash-number keeps it apart from the primitives, and
        rules derived from it (`<name>--t0`, ...) have a second "--" no fresh name has."""
        base = f"{self.root}--{re.sub(r'[^A-Za-z0-9]+', '-', hint).strip('-')[:40] or 'x'}"
        n = 1
        while f"{base}-{n}" in self.rules:
            n += 1
        self.rules[f"{base}-{n}"] = ""  # reserved: a recursive $ref may name it before its body exists
        return f"{base}-{n}"

    def prim(self, name: str) -> str:
        rule = f"{self.root}--{name}"
        if rule not in self.rules:
            self.rules[rule] = ""
            body = _PRIMITIVES[name]
            for used in re.findall(r"@([a-z0-9]+)", body):
                self.prim(used)
            self.rules[rule] = body.replace("@", f"{self.root}--")
        return rule

    # -- schemas --------------------------------------------------------------------------------
    def expr(self, schema: object, path: str) -> str:
        if schema is True:
            return self.prim("value")
        if not isinstance(schema, Mapping):
            raise GrammarError(f"{path}: a schema must be an object or true, got {schema!r}")
        unknown = sorted(set(schema) - _KEYWORDS)
        if unknown:
            raise GrammarError(f"{path}: JSON schema keyword {unknown[0]!r} is not supported")
        core = drop_annotations(schema)
        if set(core) == {"$ref"}:
            return self.ref(core["$ref"], path)
        if "$ref" in core or "allOf" in core or {"const", "enum"} <= core.keys():
            return self.expr(all_of([core], self.resolve, path), path)  # merged: no $ref, allOf or const left
        if "anyOf" in core or "oneOf" in core:
            return self.union(core, path)
        if "enum" in core or "const" in core:
            return self.enum(core, path)
        types = schema_types(core, path)
        if types is None:
            return self.prim("value")
        return self.alternatives([self.typed(t, core, path) for t in types])

    def alternatives(self, exprs: Sequence[str]) -> str:
        unique = list(dict.fromkeys(exprs))
        return unique[0] if len(unique) == 1 else "( " + " | ".join(unique) + " )"

    def typed(self, kind: str, schema: Mapping[str, Any], path: str) -> str:
        if kind == "string":
            return self.string(schema, path)
        if kind in ("integer", "number") and any(k in schema for k in BOUND_KEYWORDS):
            return integer_range_gbnf(*integer_bounds(schema, path), path)  # a bounded number: an integer
        if kind == "object":
            return self.object(schema, path)
        if kind == "array":
            return self.array(schema, path)
        return self.prim(kind)

    def string(self, schema: Mapping[str, Any], path: str) -> str:
        lo, hi = _count(schema, "minLength", path) or 0, _count(schema, "maxLength", path)
        if hi is not None and hi < lo:
            raise GrammarError(f"{path}: maxLength {hi} < minLength {lo}")
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if pattern is None and fmt is None:
            if (lo, hi) == (0, None):
                return self.prim("string")
            return f'"\\"" {repeat(self.prim("char"), lo, hi)} "\\""' if hi != 0 else '"\\"\\""'
        if pattern is not None and fmt is not None:
            raise GrammarError(f"{path}: pattern together with format {fmt!r} is not supported")
        if pattern is not None and not isinstance(pattern, str):
            raise GrammarError(f"{path}: pattern must be a string, got {pattern!r}")
        if pattern is None and not isinstance(fmt, str):  # strings not enforced were dropped as annotations
            raise GrammarError(f"{path}: format must be a string, got {fmt!r}")
        what = f"{path}: pattern {pattern!r}" if pattern is not None else f"{path}: format {fmt!r}"
        text = pattern if pattern is not None else FORMAT_PATTERNS[str(fmt)]
        return pattern_gbnf(text, lo, hi, lambda body: self.define("str", body), what)

    def define(self, hint: str, body: str) -> str:
        name = self.fresh(hint)
        self.rules[name] = body
        return name

    def enum(self, schema: Mapping[str, Any], path: str) -> str:
        extra = sorted(set(schema) - {"enum", "const", "type"})
        if extra:
            raise GrammarError(f"{path}: {extra[0]!r} together with enum/const is not supported")
        if "const" in schema:
            values: list[Any] = [schema["const"]]
        elif isinstance(schema["enum"], list) and schema["enum"]:
            values = list(schema["enum"])
        else:
            raise GrammarError(f"{path}: enum must be a non-empty array")
        types = schema_types({"type": schema["type"]}, path) if "type" in schema else None
        kept = [v for v in values if types is None or fits(v, types)]
        if not kept:
            raise GrammarError(f"{path}: no enum/const value has the type {schema['type']!r}")
        return self.alternatives([literal(_json_text(v, path)) for v in kept])

    def union(self, schema: Mapping[str, Any], path: str) -> str:
        if "anyOf" in schema and "oneOf" in schema:
            raise GrammarError(f"{path}: anyOf and oneOf in one schema are not supported")
        key = "anyOf" if "anyOf" in schema else "oneOf"
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise GrammarError(f"{path}: {key} must be a non-empty array")
        base = {k: v for k, v in schema.items() if k != key}
        branches: list[object] = []
        for i, option in enumerate(options):
            try:
                branches.append(all_of([base, option], self.resolve, f"{path}/{key}/{i}") if base else option)
            except Unsatisfiable:
                continue  # a branch nothing can match: dropping it admits the same documents
        if not branches:
            raise GrammarError(f"{path}: no {key} branch can be satisfied together with its siblings")
        if key == "oneOf" and any(
            not provably_disjoint(a, b, self.resolve) for i, a in enumerate(branches) for b in branches[i + 1 :]
        ):
            raise GrammarError(f"{path}: oneOf branches may overlap (a document matching two fails); use anyOf")
        return self.alternatives([self.expr(b, f"{path}/{key}/{i}") for i, b in enumerate(branches)])

    def ref(self, ref: object, path: str) -> str:
        if not isinstance(ref, str):
            raise GrammarError(f"{path}: $ref must be a string")
        if ref not in self.refs:
            seen = {ref}
            target = self.resolve(ref)
            while isinstance(target, Mapping) and set(drop_annotations(target)) == {"$ref"}:
                hop = target["$ref"]
                if hop in seen:
                    raise GrammarError(f"{path}: $ref {ref!r} refers to itself without content")
                seen.add(hop)
                target = self.resolve(hop)
            name = self.fresh("ref-" + ref.rsplit("/", 1)[-1])
            self.refs[ref] = name
            self.rules[name] = self.expr(target, ref)
        return self.refs[ref]

    def resolve(self, ref: str) -> object:
        if ref != "#" and not ref.startswith("#/"):
            raise GrammarError(f"$ref {ref!r}: only local references ('#/...') are supported")
        node: object = self.document
        for part in ref[2:].split("/") if ref != "#" else ():
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise GrammarError(f"$ref {ref!r} points nowhere in the schema")
        return node

    # -- objects and arrays ---------------------------------------------------------------------
    def object(self, schema: Mapping[str, Any], path: str) -> str:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties")
        if not isinstance(props, Mapping) or not all(isinstance(k, str) for k in props):
            raise GrammarError(f"{path}: properties must be an object of schemas")
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise GrammarError(f"{path}: required must be an array of strings")
        if extra is not None and not isinstance(extra, (bool, Mapping)):
            raise GrammarError(f"{path}: additionalProperties must be a boolean or a schema")
        if not props and not required and extra in (None, True):
            return self.prim("object")
        other: object = {} if extra in (None, True) else extra
        fields = [(n, s, n in required) for n, s in props.items()]
        for name in dict.fromkeys(required):
            if name not in props:
                if extra is False:
                    raise GrammarError(f"{path}: required {name!r} is forbidden by additionalProperties: false")
                fields.append((name, other, True))
        rule = self.fresh(path.rsplit("/", 1)[-1] if path != "#" else "object")
        ws = self.prim("ws")
        items: list[tuple[str, bool | None]] = [
            (f'{literal(_json_text(n, path))} {ws} ":" {ws} {self.expr(s, f"{path}/properties/{n}")} {ws}', r)
            for n, s, r in fields
        ]
        if extra is True or isinstance(extra, Mapping) or (extra is None and not props):
            key = self.key_excluding([n for n, _, _ in fields], rule)
            value = self.expr(other, f"{path}/additionalProperties")
            self.rules[f"{rule}--kv"] = f'{key} {ws} ":" {ws} {value} {ws}'
            items.append((f"{rule}--kv", None))
        self.rules[rule] = " ".join(p for p in ('"{"', ws, self.members(rule, items), '"}"') if p)
        return rule

    def members(self, rule: str, items: list[tuple[str, bool | None]]) -> str:
        """Comma-separated items in order: required (True), optional (False), repeated (None)."""
        if not items:
            return ""
        tails: list[str] = [""] * (len(items) + 1)  # tails[i]: what may follow once something is out
        first_used = 0 if items[0][1] is None else 1
        for i in reversed(range(first_used, len(items))):
            expr, required = items[i]
            part = f'"," {self.prim("ws")} {expr}'
            piece = part if required else f"( {part} )" + ("?" if required is False else "*")
            tails[i] = f"{rule}--t{i}"
            self.rules[tails[i]] = f"{piece} {tails[i + 1]}".strip()
        firsts = []
        for i, (expr, required) in enumerate(items):
            firsts.append(f"{expr} {tails[i] if required is None else tails[i + 1]}".strip())
            if required:
                return "( " + " | ".join(firsts) + " )"
        return "( " + " | ".join(firsts) + " )?"

    def key_excluding(self, names: list[str], rule: str) -> str:
        """A JSON string of raw characters that is none of names (a trie over the names)."""
        if not names:
            return self.prim("string")
        trie: dict[str, Any] = {}
        for name in names:
            node = trie
            for ch in name:
                node = node.setdefault(ch, {})
            node[""] = {}
        free = f"{rule}--free"
        self.rules[free] = f"{self.prim('raw')}*"
        return f'"\\"" {self._trie_rule(trie, f"{rule}--key", free)} "\\""'

    def _trie_rule(self, node: dict[str, Any], name: str, free: str) -> str:
        children = [ch for ch in node if ch]
        alts = [f"{literal(ch)} {self._trie_rule(node[ch], f'{name}-{i}', free)}" for i, ch in enumerate(children)]
        alts.append(f"[^{_RAW_EXCLUDED}{''.join(class_char(ord(ch)) for ch in children)}] {free}")
        if not any("\ud000" <= ch <= "\ud7ff" for ch in children):
            alts.append(f"[\\uD000-\\uD7FF] {free}")
        body = " | ".join(alts)
        self.rules[name] = body if "" in node else f"( {body} )?"  # a name ending here may not end here
        return name

    def array(self, schema: Mapping[str, Any], path: str) -> str:
        items, prefix = schema.get("items"), schema.get("prefixItems", [])
        if isinstance(items, list):  # draft 7 tuples
            items, prefix = schema.get("additionalItems"), items
        elif "additionalItems" in schema:
            raise GrammarError(f"{path}: additionalItems is only supported with an items array")
        if not isinstance(prefix, list):
            raise GrammarError(f"{path}: prefixItems must be an array of schemas")
        lo, hi = _count(schema, "minItems", path) or 0, _count(schema, "maxItems", path)
        if hi is not None and hi < lo:
            raise GrammarError(f"{path}: maxItems {hi} < minItems {lo}")
        fixed = [self.expr(s, f"{path}/prefixItems/{i}") for i, s in enumerate(prefix)][:hi]
        more: object = items if items is not None else ({} if not prefix or lo > len(fixed) else False)
        lo, hi = max(0, lo - len(fixed)), None if hi is None else hi - len(fixed)
        if more is False and lo > 0:
            raise GrammarError(f"{path}: minItems needs more items than prefixItems allows")
        ws = self.prim("ws")
        parts = [f"{e} {ws}" if i == 0 else f'"," {ws} {e} {ws}' for i, e in enumerate(fixed)]
        if more is not False and hi != 0:
            x = self.expr(more, f"{path}/items")
            unit = f'( "," {ws} {x} {ws} )'
            if fixed:
                parts.append(unit + _repeat(lo, hi))
            else:
                rest = "" if hi == 1 else unit + _repeat(max(lo - 1, 0), None if hi is None else hi - 1)
                first = f"{x} {ws} {rest}".strip()
                parts.append(first if lo else f"( {first} )?")
        return " ".join(['"[" ' + ws, *parts, '"]"'])


JSON_OBJECT_GBNF = json_schema_gbnf({"type": "object"})
"""Any JSON object (for `response_format: json_object`)."""
