"""The snapshot writer: a background thread that writes evicted states to the store and reports back.

It runs at the lowest CPU priority and waits for a moment when no turn is running (WRITE_DEFER_S at
most; no wait when someone needs the memory or the write). A state made live again before its write
starts is not written; a failed write keeps its state in memory and is retried after the next success.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from ..errors import SnapshotError
from ..store import SnapshotEntry, SnapshotStore
from .held import HeldState
from .stats import StatsRecorder

__all__ = ["WRITE_DEFER_S", "SnapshotWriter", "WriterHost", "yield_cpu_to_compute"]

# An evicted state is written when no lease is held (no turn is computing), when its memory or its
# durability is asked for, or at the latest this long after eviction: a write during a turn slows it.
WRITE_DEFER_S = 5.0


class WriterHost(Protocol):
    """What the writer asks of the pool, and how it reports back."""

    def turn_running(self) -> bool:
        """Whether a lease is held: a write now would slow a turn."""
        ...

    def in_use(self) -> set[str]:
        """Workspaces whose snapshots the disk budget must not collect (besides those with a state pending)."""
        ...

    def keep_order(self) -> list[str]:
        """Workspace ids in the order the disk budget collects their snapshots (keeping.keep_rank)."""
        ...

    def written(self, workspace_id: str, held: HeldState, entry: SnapshotEntry, current: bool) -> None:
        """held is on disk as entry (pool lock held); current: no newer state replaced it meanwhile.
        The host now owns held's reservation: it keeps or releases it."""
        ...

    def collected(self, workspace_ids: Sequence[str]) -> None:
        """Snapshots the disk budget removed after a write (pool lock not held)."""
        ...


class SnapshotWriter:
    """Owns the states on their way to disk. Guarded by the pool's condition (re-entrant)."""

    def __init__(
        self,
        cv: threading.Condition,
        store: SnapshotStore,
        stats: StatsRecorder,
        host: WriterHost,
        defer_s: float = WRITE_DEFER_S,
    ) -> None:
        self._cv = cv
        self._store = store
        self._stats = stats
        self._host = host
        self._defer_s = defer_s
        self._pending: dict[str, HeldState] = {}
        self._queue: deque[str] = deque()
        self._urgent = 0  # threads waiting for a write (room, checkpoint, close): nothing is deferred
        self._hurry = False  # the pool is closing: nothing is deferred
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="llamanode-snapshot-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued, then end the thread."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=timeout)

    def hurry(self) -> None:
        """Defer no write from now on (the pool is closing)."""
        with self._cv:
            self._hurry = True
            self._cv.notify_all()

    # -- what is pending (pool lock held) ---------------------------------------------------------
    def pending(self, workspace_id: str) -> HeldState | None:
        return self._pending.get(workspace_id)

    def __contains__(self, workspace_id: str) -> bool:
        return workspace_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def ids(self) -> set[str]:
        return set(self._pending)

    def failures(self) -> list[str]:
        return [held.error for held in self._pending.values() if held.error]

    def failed_bytes(self) -> int:
        return sum(held.nbytes for held in self._pending.values() if held.error)

    # -- handing states over ------------------------------------------------------------------------
    def enqueue(self, workspace_id: str, held: HeldState) -> None:
        """Queue held for writing; it replaces an older state of the workspace not yet being written."""
        with self._cv:
            old = self._pending.get(workspace_id)
            if old is not None and not old.writing:
                old.reservation.release()
            self._pending[workspace_id] = held
            self._queue.append(workspace_id)
            self._cv.notify_all()

    def cancel(self, workspace_id: str, held: HeldState) -> None:
        """The workspace is live again from held: unless its write has begun, it is not written (the
        snapshot on disk stays the previous one; the next eviction writes the newer state)."""
        with self._cv:
            if self._pending.get(workspace_id) is held and not held.writing:
                self._forget(workspace_id)
                self._stats.count("writes_cancelled")

    def settle(self, workspace_id: str, keep: bool) -> None:
        """Wait until workspace_id's state is no longer being written; keep=False also drops a queued or
        failed one (a newer state replaces it), keep=True waits until it is on disk (retrying a failed
        write once)."""
        retried = False
        with self._cv:
            while True:
                held = self._pending.get(workspace_id)
                if held is None:
                    return
                if keep and held.error and not retried:
                    retried, held.error = True, ""
                    self._queue.append(workspace_id)
                    self._cv.notify_all()
                if held.writing or (keep and not held.error):
                    with self.urgently():
                        self._cv.wait(timeout=1.0)
                    continue
                if keep:
                    raise SnapshotError(f"the snapshot of {workspace_id!r} could not be written: {held.error}")
                self._forget(workspace_id)
                return

    def flush(self) -> None:
        """Wait until every queued state is written (or failed)."""
        with self._cv:
            while any(not held.error for held in self._pending.values()):
                with self.urgently():
                    self._cv.wait(timeout=1.0)

    @contextmanager
    def urgently(self) -> Iterator[None]:
        """Within this block (pool lock held), the writer writes at once: someone waits for it."""
        self._urgent += 1
        self._cv.notify_all()
        try:
            yield
        finally:
            self._urgent -= 1

    # -- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        yield_cpu_to_compute()
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if not self._queue:
                    return
                delay = self._delay()
                if delay > 0:
                    self._cv.wait(timeout=delay)
                    continue
                workspace_id = self._queue.popleft()
                held = self._pending.get(workspace_id)
                if held is None or held.writing or held.error:
                    continue
                held.writing = True
                protect = self._host.in_use() | set(self._pending)
                order = self._host.keep_order()
            self._write(workspace_id, held, protect, order)

    def _delay(self) -> float:
        """Seconds to wait still before writing the head of the queue (0: write now)."""
        held = self._pending.get(self._queue[0])
        if held is None or held.writing or held.error or self._urgent or self._hurry:
            return 0.0
        if not self._host.turn_running():
            return 0.0  # idle: no turn to slow down
        return max(0.0, held.queued_at + self._defer_s - time.monotonic())

    def _write(self, workspace_id: str, held: HeldState, protect: set[str], order: list[str]) -> None:
        try:
            with self._stats.timed("write"):
                entry, collected = self._store.put(workspace_id, held.state, held.identity, protect, order)
        except Exception as exc:  # the writer must survive anything; the state stays in memory
            with self._cv:
                held.writing, held.error = False, str(exc)
                self._stats.count("snapshot_failures")
                self._cv.notify_all()
            return
        with self._cv:
            held.writing = False
            current = self._pending.get(workspace_id) is held
            if current:
                del self._pending[workspace_id]
            self._host.written(workspace_id, held, entry, current)
            self._stats.count("snapshots_written")
            self._retry_failed()  # the disk works again
            self._cv.notify_all()
        self._host.collected(collected)

    def _retry_failed(self) -> None:
        for workspace_id, held in self._pending.items():
            if held.error:
                held.error = ""
                self._queue.append(workspace_id)

    def _forget(self, workspace_id: str) -> None:
        """Drop a state that is not being written (queued or failed) and free its bytes."""
        self._pending.pop(workspace_id).reservation.release()


def yield_cpu_to_compute() -> None:
    """Run the calling thread at the lowest CPU priority: a snapshot write (or a spare context being opened)
    waits for idle cores instead of stalling the threads of the next prefill (which all wait for the slowest)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not permitted: keep the priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
