"""Anthropic Messages response bodies and streamed events (pydantic), and Anthropic's error shape.

Usage follows Anthropic's accounting: input_tokens + cache_read_input_tokens +
cache_creation_input_tokens is the whole prompt. Here cache_read is the prefix reused from the
workspace, cache_creation the prefix prefilled now (it stays resident for the next turn), and
input_tokens the rest (the last message and the generation prompt).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, RootModel

__all__ = [
    "ANTHROPIC_STREAM_MODELS",
    "AnthropicError",
    "AnthropicErrorObject",
    "AnthropicUsage",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "InputJsonDelta",
    "MessageDelta",
    "MessageDeltaEvent",
    "MessageOut",
    "MessageStartEvent",
    "MessageStopEvent",
    "MessageStreamEvent",
    "PingEvent",
    "TextDelta",
    "TextOut",
    "TokenCount",
    "ToolUseOut",
]


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: str | None
    stop_sequence: str | None
    usage: AnthropicUsage


class TokenCount(BaseModel):
    input_tokens: int


class AnthropicErrorObject(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error body (also the `error` event of a stream)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorObject


# -- streamed events ------------------------------------------------------------------------------
class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: MessageOut


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: TextOut | ToolUseOut


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(BaseModel):
    stop_reason: str | None
    stop_sequence: str | None


class MessageDeltaEvent(BaseModel):
    """The stop reason, and the usage totals (cumulative, as Anthropic sends them)."""

    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: AnthropicUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    """Sent while the request waits in the queue or its prompt is prefilled (keeps proxies and clients patient)."""

    type: Literal["ping"] = "ping"


class MessageStreamEvent(
    RootModel[
        MessageStartEvent
        | ContentBlockStartEvent
        | ContentBlockDeltaEvent
        | ContentBlockStopEvent
        | MessageDeltaEvent
        | MessageStopEvent
        | PingEvent
        | AnthropicError
    ]
):
    """One event of a streamed /v1/messages response: the SSE `event` field names its `type`."""


ANTHROPIC_STREAM_MODELS: tuple[type[BaseModel], ...] = (MessageStreamEvent,)
