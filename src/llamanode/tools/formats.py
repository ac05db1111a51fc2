"""How a model writes tool calls, detected from its chat template.

Four formats (the call syntax the grammar enforces and the parser reads):
- hermes  (Qwen, Hermes):  <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>, repeated
- llama3  (Llama 3.x):     {"name": "f", "parameters": {...}}, optionally after <|python_tag|>; one call
- mistral (Mistral Nemo):  [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
- generic (any other template): the hermes syntax, but llamanode itself tells the model about the
  tools and renders past calls and results (render.py), because the template cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FORMATS", "GENERIC", "HERMES", "LLAMA3", "MISTRAL", "ToolFormat", "detect_format", "template_renders_tools"]


@dataclass(frozen=True)
class ToolFormat:
    """The call syntax of one model family, and whether its template renders tools natively."""

    name: str
    native: bool  # the template renders `tools`, assistant `tool_calls` and `tool` messages itself
    openers: tuple[str, ...]  # literals before a call's JSON (consumed); also lazy-grammar triggers
    body_openers: tuple[str, ...] = ()  # literals that begin the call's JSON itself (kept); triggers too
    closer: str = ""  # literal after each call's JSON
    listed: bool = False  # the opener is followed by a JSON array of calls
    args_key: str = "arguments"  # the key the grammar writes ("arguments" or "parameters")
    separator: str = "\n"  # between parallel calls (a closer-opener pair, or the list's comma)
    parallel_ok: bool = True  # the syntax can hold more than one call per turn

    @property
    def triggers(self) -> tuple[str, ...]:
        return self.openers + self.body_openers


HERMES = ToolFormat("hermes", native=True, openers=("<tool_call>",), closer="</tool_call>")
LLAMA3 = ToolFormat(  # Llama 3.x writes one call per assistant turn
    "llama3",
    native=True,
    openers=("<|python_tag|>",),
    body_openers=('{"name"',),
    args_key="parameters",
    parallel_ok=False,
)
MISTRAL = ToolFormat("mistral", native=True, openers=("[TOOL_CALLS]",), listed=True, separator=", ")
GENERIC = ToolFormat("generic", native=False, openers=("<tool_call>",), closer="</tool_call>")
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}

_JINJA_CODE = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.DOTALL)
_TOOLS_VAR = re.compile(r"\btools\b")


def template_renders_tools(source: str | None) -> bool:
    """True when the template's code (not its text) refers to the `tools` variable."""
    return bool(source) and any(_TOOLS_VAR.search(block) for block in _JINJA_CODE.findall(source or ""))


def detect_format(source: str | None) -> ToolFormat:
    """The model's native call format when its template renders tools, else the generic fallback.

    A tool-aware template whose call syntax is none of the known ones also gets the fallback:
    llamanode then describes the tools itself rather than guess how the model writes calls.
    """
    if not template_renders_tools(source):
        return GENERIC
    text = source or ""
    if "<tool_call>" in text:
        return HERMES
    if "[TOOL_CALLS]" in text and "[ARGS]" not in text:
        return MISTRAL
    if "<|python_tag|>" in text or "<|start_header_id|>" in text:
        return LLAMA3
    return GENERIC
