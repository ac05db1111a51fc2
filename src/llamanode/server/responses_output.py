"""One response being built from what the model answered: its output items, and the events announcing them.

`ResponseDraft` turns a Reply's events (content, call started, arguments, call finished) into output
items and Responses stream events (order: responses_events' docstring). A non-streamed response uses the
same draft and keeps only the finished object; `ResponsesEncoder` streams the events as SSE.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from fastapi.sse import format_sse_event

from ..session import StreamChunk
from ..tools import ArgumentsDelta, CallFinished, CallStarted, ContentDelta, ToolEvent
from .engine import Generation
from .errors import ApiError
from .reply import Reply
from .responses_events import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    Event,
    FunctionCallOut,
    IncompleteDetails,
    InputTokensDetails,
    ItemEventKind,
    ItemStatus,
    LifecycleEvent,
    LifecycleKind,
    MessageOut,
    OutputItemEvent,
    OutputTextOut,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
)

__all__ = ["ResponseDraft", "ResponsesEncoder", "response_usage", "sse"]


def sse(event: Event) -> bytes:
    """An event with its SSE `event:` name, as OpenAI sends them."""
    return format_sse_event(event=event.type, data_str=event.model_dump_json())


def response_usage(generation: Generation) -> ResponseUsage:
    usage = generation.usage()
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=usage.cached_tokens, cache_write_tokens=usage.prompt_tokens - usage.cached_tokens
        ),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


class ResponseDraft:
    """The response object (status in_progress until end()), grown item by item."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self._seq = -1
        self._message: MessageOut | None = None  # the open message item
        self._text: list[str] = []
        self._calls: dict[int, FunctionCallOut] = {}  # open call items by the parser's call index

    def opening(self) -> list[Event]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def feed(self, events: Sequence[ToolEvent]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, ContentDelta):
                out += self._open_message() if self._message is None else []
                out.append(self._text_delta(event.text))
            elif isinstance(event, CallStarted):
                out += self._close_message("completed")
                out.append(self._open_call(event))
            elif isinstance(event, ArgumentsDelta):
                item = self._calls[event.index]
                seq, at = self._next(), self._at(item)
                out.append(ArgumentsDeltaEvent(sequence_number=seq, item_id=item.id, output_index=at, delta=event.text))
            elif isinstance(event, CallFinished):
                out += self._close_call(event)
        return out

    def end(self, finish: str, usage: ResponseUsage) -> list[Event]:
        """The last events: the open message closes; completed, or incomplete when a length limit cut it."""
        cut = finish == "length"
        out = self._close_message("incomplete" if cut else "completed")
        self.response.status = "incomplete" if cut else "completed"
        self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens") if cut else None
        self.response.usage = usage
        self.response.completed_at = int(time.time())
        return [*out, self._lifecycle("response.incomplete" if cut else "response.completed")]

    def fail(self, error: ApiError) -> list[Event]:
        self.response.status = "failed"
        self.response.error = ResponseError(code=error.code or error.type, message=error.message)
        event = ErrorEvent(sequence_number=self._next(), code=error.code, message=error.message, param=error.param)
        return [event, self._lifecycle("response.failed")]

    # -- items -------------------------------------------------------------------------------------------
    def _open_message(self) -> list[Event]:
        message = self._message = MessageOut(id=_item_id("msg"), status="in_progress", content=[])
        self._text = []
        self.response.output.append(message)
        at = self._at(message)
        return [
            self._item_event("response.output_item.added", message.model_copy()),
            ContentPartEvent(
                type="response.content_part.added",
                sequence_number=self._next(),
                item_id=message.id,
                output_index=at,
                content_index=0,
                part=OutputTextOut(text=""),
            ),
        ]

    def _text_delta(self, text: str) -> TextDeltaEvent:
        assert self._message is not None
        self._text.append(text)
        ident, at = self._message.id, self._at(self._message)
        return TextDeltaEvent(sequence_number=self._next(), item_id=ident, output_index=at, content_index=0, delta=text)

    def _close_message(self, status: ItemStatus) -> list[Event]:
        message, self._message = self._message, None
        if message is None:
            return []
        text = "".join(self._text)
        ident, at = message.id, self._at(message)
        message.content, message.status = [OutputTextOut(text=text)], status
        return [
            TextDoneEvent(sequence_number=self._next(), item_id=ident, output_index=at, content_index=0, text=text),
            ContentPartEvent(
                type="response.content_part.done",
                sequence_number=self._next(),
                item_id=ident,
                output_index=at,
                content_index=0,
                part=OutputTextOut(text=text),
            ),
            self._item_event("response.output_item.done", message),
        ]

    def _open_call(self, event: CallStarted) -> OutputItemEvent:
        item = FunctionCallOut(id=_item_id("fc"), status="in_progress", call_id=event.id, name=event.name, arguments="")
        self._calls[event.index] = item
        self.response.output.append(item)
        return self._item_event("response.output_item.added", item.model_copy())

    def _close_call(self, event: CallFinished) -> list[Event]:
        item = self._calls.pop(event.index)
        item.arguments, item.status = event.arguments, "completed" if event.complete else "incomplete"
        done = ArgumentsDoneEvent(
            sequence_number=self._next(),
            item_id=item.id,
            output_index=self._at(item),
            name=item.name,
            arguments=item.arguments,
        )
        return [done, self._item_event("response.output_item.done", item)]

    def _item_event(self, kind: ItemEventKind, item: MessageOut | FunctionCallOut) -> OutputItemEvent:
        return OutputItemEvent(type=kind, sequence_number=self._next(), output_index=self._at(item), item=item)

    def _at(self, item: MessageOut | FunctionCallOut) -> int:
        """The item's output_index (a copy announced as added has its original's id)."""
        return next(i for i, o in enumerate(self.response.output) if o.id == item.id)

    def _lifecycle(self, kind: LifecycleKind) -> LifecycleEvent:
        return LifecycleEvent(type=kind, sequence_number=self._next(), response=self.response.model_copy(deep=True))

    def _next(self) -> int:
        self._seq += 1
        return self._seq


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ResponsesEncoder:
    """The StreamEncoder of a streamed response; complete(draft) runs once the last event is built."""

    def __init__(
        self, draft: ResponseDraft, generation: Generation, reply: Reply, complete: Callable[[ResponseDraft], None]
    ) -> None:
        self.draft = draft
        self.generation = generation
        self.reply = reply
        self.complete = complete

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        events = self.draft.feed(self.reply.feed(chunk.text))
        if chunk.finish_reason is not None:
            events += self.draft.feed(self.reply.finish())
        return [sse(event) for event in events]

    def done(self) -> list[bytes]:
        events = self.draft.end(self.generation.finish_reason or "stop", response_usage(self.generation))
        self.complete(self.draft)
        return [sse(event) for event in events]

    def error(self, error: ApiError) -> bytes:
        return b"".join(sse(event) for event in self.draft.fail(error))
