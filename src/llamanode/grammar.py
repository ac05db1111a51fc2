"""JSON schema -> GBNF. PLACEHOLDER: a minimal converter with the interface of the real module.

The real `grammar.py` (another branch) replaces this file at merge; only the three names below are
the contract. Supported here: object (properties, required), array (items), string, integer,
number, boolean, null, enum, const, anyOf/oneOf, and `{}` (any JSON value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import GrammarError

__all__ = ["JSON_OBJECT_GBNF", "json_schema_gbnf", "schema_rules"]

_PRIMITIVES = {
    "ws": "[ \\t\\n]{0,8}",
    "string": '"\\"" ( [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\\""',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,15} )',
    "number": '"-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?',
    "boolean": '"true" | "false"',
    "null": '"null"',
}


def _literal(text: str) -> str:
    """A GBNF string literal that matches text exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + escaped.replace("\r", "\\r") + '"'


class _Builder:
    def __init__(self, root: str) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.root}-{hint}{self._count}"

    def primitive(self, kind: str) -> str:
        name = f"{self.root}-{kind}"
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[kind]
        return name

    def value(self) -> str:
        name = f"{self.root}-value"
        if name not in self.rules:
            self.rules[name] = ""  # reserve first: the generic value rules refer to each other
            ws = self.primitive("ws")
            obj, arr = f"{self.root}-anyobject", f"{self.root}-anyarray"
            member = f'{self.primitive("string")} {ws} ":" {ws} {name}'
            self.rules[obj] = f'"{{" {ws} ( {member} ( {ws} "," {ws} {member} )* )? {ws} "}}"'
            self.rules[arr] = f'"[" {ws} ( {name} ( {ws} "," {ws} {name} )* )? {ws} "]"'
            kinds = " | ".join(self.primitive(k) for k in ("string", "number", "boolean", "null"))
            self.rules[name] = f"{obj} | {arr} | {kinds}"
        return name

    def schema(self, schema: Any, target: str | None = None) -> str:
        """The rule name (or inline expression) for a schema; written to `target` when given."""
        expr = self._expr(schema)
        if target is None:
            return expr
        self.rules[target] = expr
        return target

    def _expr(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self.value()
        if not isinstance(schema, Mapping):
            raise GrammarError(f"unsupported JSON schema node: {schema!r}")
        if "const" in schema:
            return _literal(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema:
            return self._alternatives([_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._alternatives([self._sub(s, "alt") for s in schema[key]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._alternatives([self._sub({**schema, "type": k}, "alt") for k in kind])
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind in ("string", "integer", "number", "boolean", "null"):
            return self.primitive(kind)
        if kind is None:
            return self.value()
        raise GrammarError(f"unsupported JSON schema type: {kind!r}")

    def _sub(self, schema: Any, hint: str) -> str:
        name = self.name(hint)
        self.rules[name] = ""
        self.rules[name] = self._expr(schema)
        return name

    @staticmethod
    def _alternatives(options: list[str]) -> str:
        if not options:
            raise GrammarError("an enum/anyOf with no options matches nothing")
        return "( " + " | ".join(options) + " )"

    def _array(self, schema: Mapping[str, Any]) -> str:
        ws = self.primitive("ws")
        item = self._sub(schema.get("items", {}), "item")
        return f'"[" {ws} ( {item} ( {ws} "," {ws} {item} )* )? {ws} "]"'

    def _object(self, schema: Mapping[str, Any]) -> str:
        """Properties in declared order; required ones always, optional ones may be left out."""
        ws = self.primitive("ws")
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise GrammarError("properties must be an object")
        if not props:
            self.value()  # defines the generic object rule
            return f"{self.root}-anyobject"
        required = set(schema.get("required") or ())
        pairs = [
            (f'{_literal(json.dumps(k, ensure_ascii=False))} {ws} ":" {ws} {self._sub(v, "prop")}', k in required)
            for k, v in props.items()
        ]
        head = self._members(pairs, ws)
        return f'"{{" {ws} {head} {ws} "}}"'

    def _members(self, pairs: list[tuple[str, bool]], ws: str) -> str:
        """head(i): members i.. when none was written yet; tail(i): each present one after a comma."""
        tail, head = "", ""
        for pair, required in reversed(pairs):
            t_name, h_name = self.name("tail"), self.name("head")
            if required:
                self.rules[t_name] = f'{ws} "," {ws} {pair} {tail}'.rstrip()
                self.rules[h_name] = f"{pair} {tail}".rstrip()
            else:
                self.rules[t_name] = f'( {ws} "," {ws} {pair} )? {tail}'.rstrip()
                self.rules[h_name] = f"( {pair} {tail} ) | {head}" if head else f"( {pair} {tail} )?"
            tail, head = t_name, h_name
        return head


def schema_rules(schema: Mapping[str, Any], root: str) -> str:
    """GBNF rules for one schema: top rule `root`, every helper prefixed `f"{root}-"`."""
    builder = _Builder(root)
    builder.schema(schema, root)
    return "\n".join(f"{name} ::= {body}" for name, body in builder.rules.items()) + "\n"


def json_schema_gbnf(schema: Mapping[str, Any]) -> str:
    """A whole grammar (start rule `root`) for one JSON schema."""
    return schema_rules(schema, "root")


JSON_OBJECT_GBNF = schema_rules({"type": "object"}, "root")
