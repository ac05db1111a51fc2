"""The one bridge between blocking llama.cpp work and the event loop.

`Bridge.start(work)` runs `work(bridge)` on the compute executor (a thread pool sized to
--parallel). The work calls `bridge.emit(item)` for each progress report or chunk; async code
awaits `bridge.get()`. At most `buffer` items wait unread (backpressure: emit blocks), and
emit raises Cancelled once the request is cancelled, so the work stops at its next chunk or token.
After its last item the work may wait for `delivered()`: True once the response is fully written.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from .call import Cancellation, Cancelled

__all__ = ["Bridge"]

T = TypeVar("T")
DEFAULT_BUFFER = 16


@dataclass(frozen=True)
class _Failed:
    exc: BaseException


class _End:
    pass


_END = _End()


class Bridge(Generic[T]):
    def __init__(self, executor: Executor, cancel: Cancellation, buffer: int = DEFAULT_BUFFER) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = executor
        self._cancel = cancel
        self._queue: asyncio.Queue[T | _Failed | _End] = asyncio.Queue()
        self._room = threading.Semaphore(buffer)
        self._delivered = threading.Event()
        self._delivered_ok = False
        self._future: asyncio.Future[None] | None = None
        self._abandoned = False
        cancel.on_cancel(self._wake)

    # -- the worker thread's side ----------------------------------------------------------------
    def emit(self, item: T) -> None:
        """Hand one item to the consumer; blocks while `buffer` items are unread. Raises Cancelled."""
        self.check()
        self._room.acquire()
        self.check()
        self._put(item)

    def check(self) -> None:
        """Raise Cancelled when the request was cancelled or its consumer gave up."""
        self._cancel.check()
        if self._abandoned:
            raise Cancelled("abandoned")

    def delivered(self) -> bool:
        """Wait until the consumer is done; True when the whole response reached the client."""
        self._delivered.wait()
        return self._delivered_ok and self._cancel.reason is None and not self._abandoned

    def _put(self, item: T | _Failed | _End) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self, work: Callable[[Bridge[T]], None]) -> None:
        try:
            work(self)
        except BaseException as exc:
            self._put(_Failed(exc))
        finally:
            self._put(_END)

    # -- the event loop's side -------------------------------------------------------------------
    def start(self, work: Callable[[Bridge[T]], None]) -> None:
        self._future = self._loop.run_in_executor(self._executor, self._run, work)

    @property
    def started(self) -> bool:
        return self._future is not None

    async def get(self) -> T | None:
        """The next emitted item, None once the work has ended; re-raises what the work raised."""
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # stays ended
            return None
        if isinstance(item, _Failed):
            raise item.exc
        self._room.release()
        return item

    async def finish(self, delivered: bool) -> None:
        """Tell the work whether the response was delivered, and wait for it to end."""
        self._delivered_ok = delivered
        if not delivered:
            self._abandoned = True
            self._room.release()  # a producer blocked on a full buffer wakes up and stops
        self._delivered.set()
        if self._future is not None:
            await asyncio.shield(self._future)

    def _wake(self) -> None:
        self._room.release()
        self._delivered.set()
