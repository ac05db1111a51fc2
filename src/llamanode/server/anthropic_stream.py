"""Decoded text as Anthropic content blocks: streamed events, and the finished message.

`Blocks` turns text deltas (through the tool-call parser when calls are possible) into content-block
events and keeps the finished blocks; `MessagesEncoder` writes a generation as Anthropic's named SSE
events: message_start (once the prompt is in, so its usage is known), content_block_start/delta/stop,
message_delta (stop reason, usage), message_stop; `ping` while queued or prefilling; `error` when the
generation fails after the headers.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from fastapi.sse import format_sse_event
from pydantic import BaseModel

from ..chat import ChatMessage
from ..session import PrefillProgress, StreamChunk
from ..tools import ArgumentsDelta, CallFinished, CallStarted, ContentDelta, ToolCall, ToolCallParser, ToolEvent
from .anthropic_convert import arguments_text
from .anthropic_responses import (
    AnthropicUsage,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJsonDelta,
    MessageDelta,
    MessageDeltaEvent,
    MessageOut,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    TextDelta,
    TextOut,
    ToolUseOut,
)
from .engine import Generation, Queued
from .errors import ApiError, anthropic_error

__all__ = ["Blocks", "MessagesEncoder", "message_out", "new_tool_use_id", "ping", "stop_reason", "usage"]

Content = TextOut | ToolUseOut


def new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def event(model: BaseModel) -> bytes:
    """One named SSE event (Anthropic's clients dispatch on the `event` field)."""
    kind = getattr(model, "type", "")
    return format_sse_event(event=kind, data_str=model.model_dump_json())


def ping(_: Queued | PrefillProgress) -> bytes:
    return event(PingEvent())


class Blocks:
    """Text deltas -> content blocks; feed() and finish() return the block events."""

    def __init__(self, parser: ToolCallParser | None) -> None:
        self.parser = parser
        self.content: list[Content] = []
        self.calls = 0  # complete calls
        self.cut_call = False  # the output ended inside a call's arguments
        self._open = False
        self._arguments = ""

    def feed(self, text: str) -> list[BaseModel]:
        if self.parser is None:
            return self._events([ContentDelta(text)] if text else [])
        return self._events(self.parser.feed(text))

    def finish(self) -> list[BaseModel]:
        events = self._events(self.parser.finish()) if self.parser is not None else []
        return events + self._close()

    def assistant_message(self) -> ChatMessage:
        """The message as the client sends it back next turn, converted as anthropic_convert converts it."""
        texts = [b.text for b in self.content if isinstance(b, TextOut)]
        calls = [ToolCall(b.id, b.name, arguments_text(b.input)) for b in self.content if isinstance(b, ToolUseOut)]
        return ChatMessage("assistant", "\n".join(texts), tool_calls=tuple(calls))

    def _events(self, parsed: list[ToolEvent]) -> list[BaseModel]:
        out: list[BaseModel] = []
        for item in parsed:
            if isinstance(item, ContentDelta):
                if not self._open or not isinstance(self.content[-1], TextOut):
                    out += self._start(TextOut(text=""))
                block = self.content[-1]
                assert isinstance(block, TextOut)
                block.text += item.text
                out.append(ContentBlockDeltaEvent(index=len(self.content) - 1, delta=TextDelta(text=item.text)))
            elif isinstance(item, CallStarted):
                out += self._start(ToolUseOut(id=item.id, name=item.name, input={}))
                self._arguments = ""
            elif isinstance(item, ArgumentsDelta):
                self._arguments += item.text
                out.append(
                    ContentBlockDeltaEvent(index=len(self.content) - 1, delta=InputJsonDelta(partial_json=item.text))
                )
            elif isinstance(item, CallFinished):
                self._finish_call(item)
                out += self._close()
        return out

    def _start(self, block: Content) -> list[BaseModel]:
        closed = self._close()
        self.content.append(block)
        self._open = True
        start = block.model_copy()  # the block itself grows; the event keeps it as it started
        return [*closed, ContentBlockStartEvent(index=len(self.content) - 1, content_block=start)]

    def _close(self) -> list[BaseModel]:
        if not self._open:
            return []
        self._open = False
        return [ContentBlockStopEvent(index=len(self.content) - 1)]

    def _finish_call(self, finished: CallFinished) -> None:
        block = self.content[-1]
        assert isinstance(block, ToolUseOut)
        if finished.complete:
            block.input = finished.tool_call().arguments_value()
            self.calls += 1
            return
        self.cut_call = True  # cut by max_tokens or the window: what arrived, if it is an object already
        try:
            value = json.loads(finished.arguments)
        except json.JSONDecodeError:
            value = {}
        block.input = value if isinstance(value, dict) else {}


def stop_reason(generation: Generation, blocks: Blocks) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a finished generation."""
    report = generation.report
    reason = report.stop_reason if report is not None else "eog"
    if reason == "max_tokens":
        return ("model_context_window_exceeded" if generation.window_capped else "max_tokens"), None
    if blocks.calls and not blocks.cut_call:
        return "tool_use", None
    if reason == "stop_string" and report is not None:
        return "stop_sequence", report.stop_string
    return "end_turn", None


def usage(generation: Generation) -> AnthropicUsage:
    prefix, suffix = generation.prefix, generation.suffix
    return AnthropicUsage(
        input_tokens=suffix.suffix_tokens if suffix is not None else 0,
        output_tokens=generation.generated,
        cache_creation_input_tokens=prefix.prefilled_tokens if prefix is not None else 0,
        cache_read_input_tokens=prefix.reused_tokens if prefix is not None else 0,
    )


def message_out(
    ident: str, model: str, content: list[Content], reason: tuple[str | None, str | None], use: AnthropicUsage
) -> MessageOut:
    return MessageOut(id=ident, model=model, content=content, stop_reason=reason[0], stop_sequence=reason[1], usage=use)


class MessagesEncoder:
    """A generation as Anthropic's streamed events (streaming.StreamEncoder)."""

    def __init__(
        self, generation: Generation, blocks: Blocks, ident: str, model: str, on_done: Callable[[], None]
    ) -> None:
        self.generation = generation
        self.blocks = blocks
        self.ident = ident
        self.model = model
        self._on_done = on_done
        self._started = False

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        models: list[BaseModel] = []
        if not self._started:  # the prompt is in: its usage is known
            self._started = True
            start = message_out(self.ident, self.model, [], (None, None), usage(self.generation))
            models.append(MessageStartEvent(message=start))
        models += self.blocks.feed(chunk.text)
        if chunk.finish_reason is not None:
            models += self.blocks.finish()
            reason, sequence = stop_reason(self.generation, self.blocks)
            self.generation.call.log["stop_reason"] = reason
            delta = MessageDelta(stop_reason=reason, stop_sequence=sequence)
            models.append(MessageDeltaEvent(delta=delta, usage=usage(self.generation)))
        return [event(m) for m in models]

    def done(self) -> list[bytes]:
        self._on_done()
        return [event(MessageStopEvent())]

    def error(self, error: ApiError) -> bytes:
        return format_sse_event(event="error", data_str=json.dumps(anthropic_error(error)))
