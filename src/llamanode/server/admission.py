"""Admission: a bounded wait queue, one request at a time per workspace, N compute slots overall.

A request first queues for its workspace (requests to one workspace are serialized), then for a
compute slot (different workspaces run concurrently, at most `parallel` at once). When the queue
is full a request is refused at once (429 with Retry-After); one that waits longer than
`queue_timeout_s` is refused with 503. Neither touches any workspace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import ApiError

__all__ = ["Admission", "AdmissionStats"]


@dataclass(frozen=True)
class AdmissionStats:
    queued: int
    active: int
    parallel: int
    max_queue: int


class _WorkspaceLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class Admission:
    def __init__(self, parallel: int, max_queue: int, queue_timeout_s: float = 300.0) -> None:
        if parallel < 1 or max_queue < 0:
            raise ValueError("parallel must be >= 1 and max_queue >= 0")
        self.parallel = parallel
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(parallel)
        self._guard = threading.Lock()
        self._workspaces: dict[str, _WorkspaceLock] = {}
        self._queued = 0
        self._active = 0

    def stats(self) -> AdmissionStats:
        with self._guard:
            return AdmissionStats(self._queued, self._active, self.parallel, self.max_queue)

    @contextmanager
    def slot(self, workspace: str | None) -> Iterator[float]:
        """Hold the workspace (if any) and a compute slot; yields the seconds spent queued."""
        started = time.perf_counter()
        with self._guard:
            if self._queued >= self.max_queue and not self._free_now(workspace):
                raise ApiError(
                    429,
                    f"server busy: {self._queued} requests already queued (limit {self.max_queue}); retry later",
                    "rate_limit_error",
                    "queue_full",
                    headers={"Retry-After": "1"},
                )
            self._queued += 1
            entry = self._workspaces.setdefault(workspace, _WorkspaceLock()) if workspace is not None else None
            if entry is not None:
                entry.users += 1
        held_ws = held_slot = False
        try:
            deadline = started + self.queue_timeout_s
            if entry is not None:
                held_ws = entry.lock.acquire(timeout=max(deadline - time.perf_counter(), 0.0))
                if not held_ws:
                    raise self._timeout()
            held_slot = self._slots.acquire(timeout=max(deadline - time.perf_counter(), 0.0))
            if not held_slot:
                raise self._timeout()
            with self._guard:
                self._queued -= 1
                self._active += 1
            try:
                yield time.perf_counter() - started
            finally:
                with self._guard:
                    self._active -= 1
        except BaseException:
            if not held_slot:
                with self._guard:
                    self._queued -= 1
            raise
        finally:
            if held_slot:
                self._slots.release()
            if entry is not None:
                if held_ws:
                    entry.lock.release()
                with self._guard:
                    entry.users -= 1
                    if entry.users == 0:
                        self._workspaces.pop(workspace, None)  # type: ignore[arg-type]

    def _free_now(self, workspace: str | None) -> bool:
        """True when the request would not wait at all (so a full queue need not refuse it)."""
        busy_ws = workspace is not None and workspace in self._workspaces
        return not busy_ws and self._active < self.parallel

    def _timeout(self) -> ApiError:
        return ApiError(
            503,
            f"server busy: waited {self.queue_timeout_s:.0f} s in the queue; retry later",
            "server_error",
            "queue_timeout",
            headers={"Retry-After": "5"},
        )
