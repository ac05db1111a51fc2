"""Admission: a bounded wait queue, one request at a time per workspace, N compute slots overall.

A request first queues for its workspace (requests to one workspace are serialized), then for a
compute slot (different workspaces run concurrently, at most `parallel` at once). When the queue
is full a request is refused at once (429 with Retry-After); one that waits longer than
`queue_timeout_s` is refused with 503; one whose client leaves while it waits stops waiting.
None of them touches any workspace. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .call import Cancellation, Cancelled
from .errors import ApiError

__all__ = ["Admission", "AdmissionStats", "Ticket"]


@dataclass(frozen=True)
class AdmissionStats:
    queued: int
    active: int
    parallel: int
    max_queue: int


class _WorkspaceLock:
    def __init__(self) -> None:
        # A semaphore of one, not a Lock: its locked() is exact ("cannot be acquired without waiting",
        # waiters included), which the no-wait path in _wait relies on.
        self.lock = asyncio.Semaphore(1)
        self.users = 0


class Admission:
    def __init__(self, parallel: int, max_queue: int, queue_timeout_s: float = 300.0) -> None:
        if parallel < 1 or max_queue < 0:
            raise ValueError("parallel must be >= 1 and max_queue >= 0")
        self.parallel = parallel
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(parallel)
        self._workspaces: dict[str, _WorkspaceLock] = {}
        self.queued = 0
        self.active = 0

    def stats(self) -> AdmissionStats:
        return AdmissionStats(self.queued, self.active, self.parallel, self.max_queue)

    def enter(self, workspace: str | None) -> Ticket:
        """Join the queue, or raise 429 at once when it is full (unless this request would not wait)."""
        if self.queued >= self.max_queue and not self._free_now(workspace):
            raise ApiError(
                429,
                f"server busy: {self.queued} requests already queued (limit {self.max_queue}); retry later",
                "rate_limit_error",
                "queue_full",
                headers={"Retry-After": "1"},
            )
        entry = None
        if workspace is not None:
            entry = self._workspaces.setdefault(workspace, _WorkspaceLock())
            entry.users += 1
        self.queued += 1
        return Ticket(self, workspace, entry)

    def _free_now(self, workspace: str | None) -> bool:
        """True when the request would not wait at all (so a full queue need not refuse it)."""
        busy_ws = workspace is not None and workspace in self._workspaces
        return not busy_ws and self.active < self.parallel

    def _forget(self, workspace: str | None, entry: _WorkspaceLock | None) -> None:
        if workspace is not None and entry is not None:
            entry.users -= 1
            if entry.users == 0:
                self._workspaces.pop(workspace, None)

    def timeout_error(self) -> ApiError:
        return ApiError(
            503,
            f"server busy: waited {self.queue_timeout_s:.0f} s in the queue; retry later",
            "server_error",
            "queue_timeout",
            headers={"Retry-After": "5"},
        )


class Ticket:
    """A place in the queue: acquire() waits for the workspace and a slot; release() gives back what is held."""

    def __init__(self, admission: Admission, workspace: str | None, entry: _WorkspaceLock | None) -> None:
        self._admission = admission
        self._workspace = workspace
        self._entry = entry
        self._started = time.perf_counter()
        self._held_ws = False
        self._held_slot = False
        self._released = False

    async def acquire(self, cancel: Cancellation) -> float:
        """Wait (at most queue_timeout_s) for the workspace, then a compute slot; the seconds queued.

        Raises Cancelled when `cancel` fires first, the 503 ApiError on timeout; release() either way.
        """
        deadline = self._started + self._admission.queue_timeout_s
        if self._entry is not None:
            lock = self._entry.lock
            self._held_ws = await _wait(lock.locked, lock.acquire, lock.release, cancel, deadline)
            if not self._held_ws:
                raise self._refusal(cancel)
        slots = self._admission._slots
        self._held_slot = await _wait(slots.locked, slots.acquire, slots.release, cancel, deadline)
        if not self._held_slot:
            raise self._refusal(cancel)
        self._admission.queued -= 1
        self._admission.active += 1
        return time.perf_counter() - self._started

    def _refusal(self, cancel: Cancellation) -> Exception:
        return Cancelled(cancel.reason) if cancel.reason is not None else self._admission.timeout_error()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        admission = self._admission
        if self._held_slot:
            admission.active -= 1
            admission._slots.release()
        else:
            admission.queued -= 1
        if self._held_ws and self._entry is not None:
            self._entry.lock.release()
        admission._forget(self._workspace, self._entry)


async def _wait(
    busy: Callable[[], bool],
    acquire: Callable[[], Awaitable[Any]],
    release: Callable[[], None],
    cancel: Cancellation,
    deadline: float,
) -> bool:
    """acquire() unless cancel fires or the deadline passes first; True when acquired."""
    if cancel.reason is not None:
        return False
    if not busy():
        await acquire()  # free: returns without suspending (asyncio.Semaphore.locked() counts waiters)
        return True
    waiter = asyncio.ensure_future(acquire())
    stop = asyncio.ensure_future(cancel.wait())
    try:
        timeout = max(deadline - time.perf_counter(), 0.0)
        done, _ = await asyncio.wait({waiter, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this task was cancelled: leave nothing held
        _abandon(waiter, release)
        raise
    finally:
        stop.cancel()
    if waiter in done:
        return True
    _abandon(waiter, release)
    return False


def _abandon(waiter: asyncio.Future[Any], release: Callable[[], None]) -> None:
    """Stop waiting; if the acquire completed after all, give it back."""
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled() and waiter.exception() is None:
        release()
