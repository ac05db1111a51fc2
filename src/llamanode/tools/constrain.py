"""The grammar that makes every emitted call parse and validate: the format's call syntax around each
function's JSON schema (llamanode.grammar.schema_rules). Forced for `required` and a named function;
lazy for `auto` (free text until the format's call marker, the grammar from the marker on)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..grammar import schema_annotations, schema_rules
from .formats import ToolFormat
from .types import Tools

__all__ = ["ToolGrammar", "tool_grammar"]


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    triggers: tuple[str, ...]  # empty: the grammar applies from the first token
    annotations: tuple[str, ...] = ()  # "<function>: <where>: format '<name>'": formats not enforced

    def decode_options(self) -> dict[str, Any]:
        """The DecodeConfig fields that enforce it."""
        return {"grammar": self.gbnf, "grammar_triggers": self.triggers}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching text exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


_NAME_KEY = gbnf_literal('{"name": ')


def tool_grammar(fmt: ToolFormat, tools: Tools) -> ToolGrammar | None:
    """None when the model may not call anything (tool_choice 'none')."""
    specs = tools.callable
    if not specs:
        return None
    rules = [f"root ::= {_root(fmt, tools.parallel and fmt.parallel_ok)}"]
    functions = " | ".join(f"fn{i}" for i in range(len(specs)))
    rules.append(f"body ::= {_NAME_KEY} ( {functions} )")
    for i, spec in enumerate(specs):
        head = gbnf_literal(f"{json.dumps(spec.name)}, {json.dumps(fmt.args_key)}: ")
        rules.append(f'fn{i} ::= {head} fn{i}-args "}}"')
        rules.append(schema_rules(spec.parameters, f"fn{i}-args").strip())
    triggers = fmt.triggers if tools.choice.mode == "auto" else ()
    notes = tuple(f"{spec.name}: {note}" for spec in specs for note in schema_annotations(spec.parameters))
    return ToolGrammar("\n".join(rules) + "\n", triggers, notes)


def _root(fmt: ToolFormat, parallel: bool) -> str:
    """The call syntax around `body` (one call's JSON object)."""
    if fmt.listed:
        more = f" ( {gbnf_literal(fmt.separator)} body )*" if parallel else ""
        return f"{gbnf_literal(fmt.openers[0] + '[')} body{more} {gbnf_literal(']')}"
    if fmt.body_openers:  # the call's JSON is the marker; a consumed opener may precede it
        return f"{gbnf_literal(fmt.openers[0])}? body" if fmt.openers else "body"
    call = f"{gbnf_literal(fmt.openers[0] + chr(10))} body {gbnf_literal(chr(10) + fmt.closer)}"
    return f"( {call} ) ( {gbnf_literal(fmt.separator)} {call} )*" if parallel else call
