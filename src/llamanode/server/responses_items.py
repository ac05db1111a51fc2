"""Responses input items and tools, read into what the chat template renders (README: Responses API).

- `message` (user, assistant, system, developer; text or input_text/output_text/refusal parts, joined
  with newlines) becomes a chat message; `developer` renders as `system`, as llama.cpp does.
- `function_call` items join the assistant message before them (consecutive calls: one turn);
  `function_call_output` becomes a `tool` message answering its call_id.
- `reasoning` items are left out (this model does not reason; their content is often encrypted) and
  counted in the log line (`dropped_items`).
- any other item type, and non-text parts (images, files, audio), are a 400 naming the type.
- tools: `function` tools are offered to the model; every other type (Codex's `namespace` and
  `web_search`, hosted and custom tools) is left out and named in the log line (`ignored_tools`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..chat import ChatMessage
from ..errors import UnsupportedFeatureError
from ..tools import ToolCall, ToolChoice, Tools, ToolSpec
from .errors import ApiError, from_exception
from .responses_schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    FunctionToolChoice,
    InputItem,
    InputTextPart,
    MessageItem,
    OtherItem,
    OtherPart,
    OutputTextPart,
    ReasoningItem,
    RefusalPart,
    ResponseRequest,
)

__all__ = ["Conversation", "read_input", "read_tools"]


@dataclass
class Conversation:
    """The input as chat messages, and what was left out of it (reasoning items)."""

    messages: list[ChatMessage] = field(default_factory=list)
    dropped_reasoning: int = 0


def read_input(value: str | Sequence[InputItem] | None) -> Conversation:
    if value is None:
        return Conversation()
    if isinstance(value, str):
        return Conversation([ChatMessage("user", value)])
    out = Conversation()
    for index, item in enumerate(value):
        if isinstance(item, MessageItem):
            out.messages.append(ChatMessage(item.role, _text(item.content, index)))
        elif isinstance(item, FunctionCallItem):
            complete = item.status != "incomplete"
            _add_call(out.messages, ToolCall(item.call_id, item.name, item.arguments, complete=complete))
        elif isinstance(item, FunctionCallOutputItem):
            text = _text(item.output, index)
            out.messages.append(ChatMessage("tool", text, name=item.name, tool_call_id=item.call_id))
        elif isinstance(item, ReasoningItem):
            out.dropped_reasoning += 1
        else:
            assert isinstance(item, OtherItem)
            raise _unsupported(f"input item type {item.type!r} (input[{index}])")
    return out


def _add_call(messages: list[ChatMessage], call: ToolCall) -> None:
    """A call joins the assistant turn it follows (its text, or the calls before it)."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage("assistant", last.content, last.name, (*last.tool_calls, call))
    else:
        messages.append(ChatMessage("assistant", "", None, (call,)))


def _text(content: str | Sequence[object], index: int) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if isinstance(part, InputTextPart | OutputTextPart):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            assert isinstance(part, OtherPart)
            raise _unsupported(f"content part type {part.type!r} in input[{index}]: only text reaches this model")
    return "\n".join(texts)


def read_tools(body: ResponseRequest) -> tuple[Tools | None, list[str]]:
    """(the function tools and how the model may use them, or None without any; the tools left out)."""
    specs: list[ToolSpec] = []
    ignored: list[str] = []
    for tool in body.tools or ():
        if isinstance(tool, FunctionTool):
            specs.append(ToolSpec(tool.name, tool.description or "", tool.parameters or {"type": "object"}))
        else:
            name = getattr(tool, "name", None)
            ignored.append(f"{tool.type}:{name}" if isinstance(name, str) else tool.type)
    choice = body.tool_choice
    if not specs:
        if choice not in (None, "auto", "none"):
            raise ApiError(400, "tool_choice needs function tools", param="tool_choice", code="invalid_value")
        return None, ignored
    if isinstance(choice, FunctionToolChoice):
        tool_choice = ToolChoice("function", choice.name)
    else:
        tool_choice = ToolChoice(choice or "auto")
    return Tools(tuple(specs), tool_choice, body.parallel_tool_calls is not False), ignored


def _unsupported(what: str) -> ApiError:
    return from_exception(UnsupportedFeatureError(what), "input")
