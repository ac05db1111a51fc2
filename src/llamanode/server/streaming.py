"""Generations as server-sent events, for any API: the API supplies an encoder for its event shapes.

The headers go out at once; while the request is queued or its prompt is being prefilled the stream
carries SSE comments (`: queued 10s`, `: prefill 512/1900`), which clients ignore and proxies see as
traffic. Anything that stops the generation after the headers (an error, the server shutting down)
ends the stream with the API's typed error event.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from fastapi.sse import EventSourceResponse, format_sse_event

from ..errors import LlamaNodeError
from ..session import PrefillProgress, StreamChunk
from .call import SHUTDOWN, Cancelled
from .engine import Generation, Queued
from .errors import ApiError, from_exception, shutting_down

__all__ = ["StreamEncoder", "collect", "comment", "data_event", "progress_comment", "sse_response", "stream_generation"]


class StreamEncoder(Protocol):
    """One API's streamed events."""

    def chunk(self, chunk: StreamChunk) -> list[bytes]: ...

    def done(self) -> list[bytes]: ...

    def error(self, error: ApiError) -> bytes: ...


def data_event(payload: bytes | str) -> bytes:
    return format_sse_event(data_str=payload if isinstance(payload, str) else payload.decode())


def comment(text: str) -> bytes:
    return format_sse_event(comment=text)


def sse_response(events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> EventSourceResponse:
    # X-Accel-Buffering: no asks nginx-like proxies to pass each event on at once.
    return EventSourceResponse(
        events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
    )


def progress_comment(event: Queued | PrefillProgress) -> bytes:
    """`: queued 10s`, `: prefill 512/1900`: what a stream says while its answer is not started."""
    if isinstance(event, Queued):
        return comment(f"queued {event.waited_s:.0f}s")
    return comment(f"prefill {event.done_tokens}/{event.total_tokens}")


async def stream_generation(
    generation: Generation,
    encoder: StreamEncoder,
    progress: Callable[[Queued | PrefillProgress], bytes] = progress_comment,
) -> AsyncIterator[bytes]:
    """The encoder's events; `progress` says what to send while queued or prefilling (an API's own
    keep-alive event, or SSE comments)."""
    log = generation.call.log
    try:
        async for event in generation.events():
            if isinstance(event, Queued | PrefillProgress):
                yield progress(event)
            elif event.error is not None:
                yield _error(encoder, from_exception(event.error), log)
                return
            else:
                for data in encoder.chunk(event):
                    yield data
        for data in encoder.done():
            yield data
    except Cancelled as exc:
        if exc.reason == SHUTDOWN:
            yield _error(encoder, shutting_down(), log)
    except (ApiError, LlamaNodeError) as exc:
        yield _error(encoder, from_exception(exc), log)
    except Exception as exc:  # a bug: a 500 event, and the traceback in the log line
        log["exception"] = "".join(traceback.format_exception(exc)).strip()
        yield _error(encoder, from_exception(exc), log)


def _error(encoder: StreamEncoder, error: ApiError, log: dict[str, object]) -> bytes:
    log["stream_error"] = error.code
    return encoder.error(error)


async def collect(generation: Generation) -> str:
    """Run a generation to its end; its finish reason. Raises a failed decode's typed error."""
    async for event in generation.events():
        if isinstance(event, StreamChunk) and event.error is not None:
            raise event.error
    return generation.finish_reason or "stop"
