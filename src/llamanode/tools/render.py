"""Conversations with tools, turned into messages a chat template can render.

Native formats pass through unchanged (the template receives `tools`, assistant `tool_calls` and
`tool` messages, as llama.cpp passes them). For the generic fallback the conversation is rewritten
into plain messages any template accepts: a tool block joins the system message, past calls become
assistant text in the very syntax the grammar makes the model write, and tool results become user
messages. The block does not depend on tool_choice, so switching choices keeps the prefix warm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..chat import ChatMessage
from ..errors import ToolError
from .formats import ToolFormat
from .types import ToolCall, ToolSpec

__all__ = ["call_text", "fallback_messages", "tool_block"]

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


def fallback_messages(fmt: ToolFormat, specs: Sequence[ToolSpec], messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation as plain system/user/assistant messages (see the module docstring)."""
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
    if not specs:
        return out
    block = tool_block(fmt, specs)
    if out and out[0].role in ("system", "developer"):
        first = out[0]
        return [ChatMessage(first.role, f"{first.content}\n\n{block}", first.name), *out[1:]]
    return [ChatMessage("system", block), *out]


def _call_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    return {c.id: c.name for m in messages for c in m.tool_calls if c.id}


def _response_text(message: ChatMessage, names: dict[str, str]) -> str:
    name = message.name or names.get(message.tool_call_id or "", "")
    if not name and not message.tool_call_id:
        raise ToolError("a tool message needs a tool_call_id (or a name) saying which call it answers")
    attrs = "".join(f' {k}="{v}"' for k, v in (("name", name), ("id", message.tool_call_id)) if v)
    return f"<tool_response{attrs}>\n{message.content}\n</tool_response>"
