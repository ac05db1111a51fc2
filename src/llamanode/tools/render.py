"""Conversations with tools, turned into messages a chat template can render.

Native formats pass through unchanged (the template receives `tools`, assistant `tool_calls` and
`tool` messages, as llama.cpp passes them). For the generic fallback the conversation is rewritten
into plain messages any template accepts: a tool block joins the system message, past calls become
assistant text in the very syntax the grammar makes the model write, and tool results become user
messages. The block does not depend on tool_choice, so switching choices keeps the prefix warm.
Strict templates (no system role, or user/assistant alternation) are probed once and obeyed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..chat import ChatMessage, ChatTemplate, ChatTemplateError
from ..errors import ToolError
from .formats import ToolFormat
from .types import ToolCall, ToolSpec

__all__ = ["TemplateRules", "call_text", "fallback_messages", "template_rules", "tool_block"]

_INTRO = "You can call functions to get information or to act. The functions you may call, one JSON object each:\n"
_HOW = (
    "\nTo call a function, write a block like this one, with arguments that follow the function's parameters:\n"
    "{example}\n"
    "To call several functions, write one block per call, one after another. Write nothing after your last block:"
    " the results come back in the next message, each inside <tool_response>...</tool_response>."
    " When no function is needed, answer in plain text."
)


def call_text(fmt: ToolFormat, call: ToolCall) -> str:
    """One call exactly as the grammar makes the model write it (arguments kept as sent)."""
    body = f'{{"name": {json.dumps(call.name)}, {json.dumps(fmt.args_key)}: {call.arguments}}}'
    return f"{fmt.openers[0]}\n{body}\n{fmt.closer}"


def tool_block(fmt: ToolFormat, specs: Sequence[ToolSpec]) -> str:
    """The system-prompt text that tells a model without native tool support how to call these tools."""
    listed = "\n".join(
        json.dumps({"name": s.name, "description": s.description, "parameters": dict(s.parameters)}, ensure_ascii=False)
        for s in specs
    )
    example = call_text(fmt, ToolCall("", "function_name", '{"parameter": "value"}'))
    return _INTRO + listed + "\n" + _HOW.format(example=example)


@dataclass(frozen=True)
class TemplateRules:
    """What a template without tool support accepts, learnt by rendering two small probes."""

    system: bool = True  # renders a system message
    repeated_user: bool = True  # renders two user messages in a row (strict templates demand alternation)


@functools.lru_cache(maxsize=16)
def template_rules(template: ChatTemplate) -> TemplateRules:
    def renders(*roles: str) -> bool:
        try:
            template.render([ChatMessage(role, "probe") for role in roles])
        except ChatTemplateError:
            return False
        return True

    return TemplateRules(system=renders("system", "user"), repeated_user=renders("user", "user"))


def fallback_messages(
    fmt: ToolFormat, specs: Sequence[ToolSpec], messages: Sequence[ChatMessage], rules: TemplateRules = TemplateRules()
) -> list[ChatMessage]:
    """The conversation as plain system/user/assistant messages (see the module docstring)."""
    out = _plain_messages(fmt, messages)
    if specs:
        out = _with_block(out, tool_block(fmt, specs), rules.system)
    if not rules.repeated_user:
        out = _merge_repeated_users(out)
    return out


def _plain_messages(fmt: ToolFormat, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    names = _call_names(messages)
    out: list[ChatMessage] = []
    for i, message in enumerate(messages):
        if message.role == "tool":  # consecutive results (of parallel calls) share one user message
            response = _response_text(message, names)
            if i > 0 and messages[i - 1].role == "tool":
                out[-1] = ChatMessage("user", out[-1].content + "\n" + response)
            else:
                out.append(ChatMessage("user", response))
        elif message.tool_calls:
            calls = "\n".join(call_text(fmt, c) for c in message.tool_calls)
            out.append(ChatMessage(message.role, f"{message.content}\n{calls}" if message.content else calls))
        else:
            out.append(ChatMessage(message.role, message.content, message.name))
    return out


def _with_block(messages: list[ChatMessage], block: str, system_ok: bool) -> list[ChatMessage]:
    """The tool block joins the system message; or, where the template has none, the first user message."""
    lead = [m for m in messages[:1] if m.role in ("system", "developer")]
    rest = messages[len(lead) :]
    intro = "\n\n".join([*(m.content for m in lead), block])
    if system_ok:
        return [ChatMessage(lead[0].role if lead else "system", intro, lead[0].name if lead else None), *rest]
    if rest and rest[0].role == "user":
        return [ChatMessage("user", f"{intro}\n\n{rest[0].content}", rest[0].name), *rest[1:]]
    return [ChatMessage("user", intro), *rest]


def _merge_repeated_users(messages: list[ChatMessage]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for message in messages:
        if out and out[-1].role == message.role == "user":
            out[-1] = ChatMessage("user", f"{out[-1].content}\n\n{message.content}")
        else:
            out.append(message)
    return out


def _call_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    return {c.id: c.name for m in messages for c in m.tool_calls if c.id}


def _response_text(message: ChatMessage, names: dict[str, str]) -> str:
    name = message.name or names.get(message.tool_call_id or "", "")
    if not name and not message.tool_call_id:
        raise ToolError("a tool message needs a tool_call_id (or a name) saying which call it answers")
    attrs = "".join(f' {k}="{v}"' for k, v in (("name", name), ("id", message.tool_call_id)) if v)
    return f"<tool_response{attrs}>\n{message.content}\n</tool_response>"
