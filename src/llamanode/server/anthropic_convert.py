"""An Anthropic Messages request as the conversation llamanode renders: chat messages, segment cuts, tools.

- `system` (a string or text blocks) is one system message; the text blocks of any message are
  joined with "\\n", as llama.cpp joins text parts.
- A leading system text block that is only Claude Code's billing line (BILLING_LINE, matched over the
  whole block) is not rendered unless the server keeps it: it changes with every session and would
  make each new session diverge from the last after ~20 tokens.
- User text blocks become a user message, each tool_result block a tool message (`is_error` results
  start with "Error: "); an assistant's text and tool_use blocks become one message with tool calls;
  thinking blocks are not rendered (this server never emits any); other blocks are refused, named.
- Every message, and every cache_control breakpoint between blocks, starts a manifest segment:
  `system`, `tools`, `msg3:user`, `msg3:user.2` (from block 2 on); a piece ending at a breakpoint
  carries `@cache`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..chat import ChatMessage
from ..chat_segments import Cut
from ..errors import GrammarError
from ..grammar import schema_rules
from ..tools import ToolCall, ToolChoice, Tools, ToolSpec
from .anthropic_schemas import (
    CustomTool,
    MessageIn,
    OtherBlock,
    RedactedThinkingBlock,
    ServerTool,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from .anthropic_schemas import _Conversation as ConversationRequest
from .errors import ApiError

__all__ = ["BILLING_LINE", "Conversation", "arguments_text", "convert", "is_billing_line"]

# Claude Code's per-session billing metadata, e.g. "x-anthropic-billing-header: cc_version=2.1.332.0b8;
# cc_entrypoint=sdk-cli;": only a block that is exactly this (nothing before, after or between) is dropped.
BILLING_LINE = re.compile(
    r"x-anthropic-billing-header: cc_version=[0-9]+(?:\.[0-9A-Za-z]+)*; cc_entrypoint=[A-Za-z0-9][A-Za-z0-9_-]*;"
)
ERROR_PREFIX = "Error: "  # a tool_result with is_error: true


def is_billing_line(text: str) -> bool:
    return BILLING_LINE.fullmatch(text) is not None


def arguments_text(value: dict[str, Any]) -> str:
    """A tool_use input as the call's JSON text (the same text whenever the client sends it back)."""
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Conversation:
    """What the template renders for one request, and how its prefix is named."""

    messages: list[ChatMessage] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    tools: Tools = field(default_factory=lambda: Tools(()))
    dropped_blocks: int = 0  # system blocks not rendered (the billing line)
    turns: int = 0  # the request's messages


def convert(body: ConversationRequest, keep_billing_header: bool = False) -> Conversation:
    out = Conversation(tools=_tools(body), turns=len(body.messages))
    _system(out, body.system, keep_billing_header)
    for index, message in enumerate(body.messages):
        _message(out, index, message)
    if not out.messages:
        raise ApiError(400, "messages has nothing to render (only thinking blocks?)", param="messages")
    return out


# -- system ---------------------------------------------------------------------------------------
def _system(out: Conversation, system: str | list[TextBlock] | None, keep_billing_header: bool) -> None:
    if system is None:
        return
    blocks = [TextBlock(type="text", text=system)] if isinstance(system, str) else list(system)
    first = 0
    if blocks and not keep_billing_header and is_billing_line(blocks[0].text):
        first, out.dropped_blocks = 1, 1
    if first < len(blocks):
        name = "system[billing line dropped]" if out.dropped_blocks else "system"
        _text_message(out, "system", "system", list(enumerate(blocks))[first:], name)


def _text_message(
    out: Conversation, role: str, base: str, blocks: Sequence[tuple[int, TextBlock]], first: str | None = None
) -> None:
    """Numbered text blocks as one message, cut after every breakpoint but the last block's; its first
    piece is named `first` when given."""
    index, text, start = len(out.messages), "", 0
    for n, (k, block) in enumerate(blocks):
        if n == start:  # a piece begins: it runs to the next breakpoint
            end = next((m for m in range(n, len(blocks)) if blocks[m][1].cache_control is not None), None)
            name = _suffixed(first if n == 0 and first else base, 0 if n == 0 and first else k, end is not None)
            out.cuts.append(Cut(index, name, len(text) + (1 if text else 0)))
            start = len(blocks) if end is None else end + 1
        text = f"{text}\n{block.text}" if n else block.text
    out.messages.append(ChatMessage(role, text))


# -- messages -------------------------------------------------------------------------------------
def _message(out: Conversation, index: int, message: MessageIn) -> None:
    base = f"msg{index}:{message.role}"
    if isinstance(message.content, str):
        _text_message(out, message.role, base, [(0, TextBlock(type="text", text=message.content))])
        return
    if message.role == "assistant":
        _assistant(out, index, base, message.content)
        return
    if message.role == "system":
        _system_message(out, index, base, message.content)
        return
    run: list[tuple[int, TextBlock]] = []  # consecutive text blocks: one user message
    for k, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            run.append((k, block))
            continue
        if run:
            _text_message(out, "user", base, run)
            run = []
        if isinstance(block, ToolResultBlock):
            out.cuts.append(Cut(len(out.messages), _suffixed(base, k, block.cache_control is not None)))
            out.messages.append(ChatMessage("tool", _result_text(index, k, block), tool_call_id=block.tool_use_id))
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            raise _refused(index, k, block)
    if run:
        _text_message(out, "user", base, run)


def _system_message(out: Conversation, index: int, base: str, blocks: Sequence[Any]) -> None:
    """A system message among the messages: text blocks only, rendered where it stands."""
    for k, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise _refused(index, k, block)
    _text_message(out, "system", base, list(enumerate(blocks)))


def _assistant(out: Conversation, index: int, base: str, blocks: Sequence[Any]) -> None:
    texts: list[str] = []
    calls: list[ToolCall] = []
    breakpoint_at_end = False
    for k, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, arguments_text(block.input)))
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            raise _refused(index, k, block)
        breakpoint_at_end = getattr(block, "cache_control", None) is not None
    if not texts and not calls:
        return  # only thinking: nothing to render (llama-server skips such a message too)
    out.cuts.append(Cut(len(out.messages), _suffixed(base, 0, breakpoint_at_end)))
    out.messages.append(ChatMessage("assistant", "\n".join(texts), tool_calls=tuple(calls)))


def _suffixed(base: str, block: int, breakpoint_after: bool) -> str:
    name = base if block == 0 else f"{base}.{block}"
    return name + "@cache" if breakpoint_after else name


def _result_text(index: int, k: int, block: ToolResultBlock) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts: list[str] = []
        for j, part in enumerate(block.content):
            if isinstance(part, OtherBlock):
                raise _refused(index, k, part, f".content.{j}")
            parts.append(part.text)
        text = "\n".join(parts)
    return ERROR_PREFIX + text if block.is_error else text


def _refused(index: int, k: int, block: Any, inner: str = "") -> ApiError:
    where = f"messages.{index}.content.{k}{inner}"
    kind = getattr(block, "type", "?")
    reason = "this server's model reads text only" if kind in ("image", "document") else "it cannot be rendered here"
    return ApiError(
        400,
        f"{where}: content blocks of type {kind!r} are not supported ({reason})",
        param=where,
        code="unsupported_content",
    )


# -- tools ----------------------------------------------------------------------------------------
def _tools(body: ConversationRequest) -> Tools:
    specs = [_spec(i, tool) for i, tool in enumerate(body.tools or [])]
    choice, parallel = ToolChoice(), True
    tc = body.tool_choice
    if tc is not None:
        mode = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}[tc.type]
        choice = ToolChoice(mode, getattr(tc, "name", None))
        parallel = not getattr(tc, "disable_parallel_tool_use", False)
    return Tools(tuple(specs), choice, parallel)


def _spec(index: int, tool: CustomTool | ServerTool) -> ToolSpec:
    if isinstance(tool, ServerTool):
        raise ApiError(
            400,
            f"tools.{index}: server tool {tool.type!r} ({tool.name or 'unnamed'}) is not available: llamanode runs "
            "no server tools; declare a custom tool with an input_schema and run it in the client",
            param=f"tools.{index}",
            code="unsupported_tool",
        )
    try:  # name the tool when its schema cannot become a grammar
        schema_rules(tool.input_schema, "probe")
    except GrammarError as exc:
        raise GrammarError(f"tools.{index} ({tool.name}): input_schema: {exc}") from exc
    return ToolSpec(tool.name, tool.description or "", tool.input_schema)
