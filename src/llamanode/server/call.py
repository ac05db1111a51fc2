"""One request in flight: its log fields, its cancellation, and what must be closed when it ends.

A Call is made by the guard middleware for every request; routes reach it through `current_call`.
Cancellation is set on the event loop (the client went away, or the server's drain deadline
passed) and read from worker threads, which stop at their next chunk or token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

__all__ = ["CLIENT_GONE", "SHUTDOWN", "Call", "Cancellation", "Cancelled", "current_call"]

CLIENT_GONE = "client_gone"
SHUTDOWN = "shutdown"


class Cancelled(Exception):
    """The work for a request was abandoned: its client left, or the server is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cancellation:
    """Set once, on the event loop; `reason` may be read from any thread."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._event.set()
        for callback in self._callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def check(self) -> None:
        """Raise Cancelled if cancelled (worker threads call this between chunks and tokens)."""
        if self.reason is not None:
            raise Cancelled(self.reason)

    async def wait(self) -> str:
        await self._event.wait()
        assert self.reason is not None
        return self.reason


@dataclass(eq=False)
class Call:
    """A request's log line fields, cancellation and cleanups."""

    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    log: dict[str, Any] = field(default_factory=dict)
    cancel: Cancellation = field(default_factory=Cancellation)
    response_complete: bool = False
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def client_gone(self) -> bool:
        return self.cancel.reason == CLIENT_GONE

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run closer once the response is complete (or abandoned), before the log line is written."""
        self._closers.append(closer)

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            await closer()


async def current_call(request: Request) -> Call:
    """FastAPI dependency (async: FastAPI would run a plain function on a worker thread): the Call the
    guard middleware made for this request."""
    call = request.scope["state"]["call"]
    assert isinstance(call, Call)
    return call
