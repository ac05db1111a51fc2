"""A chunk gate for prewarm tests: a prewarm thread's prefill chunks pass one permit at a time, so tests
count chunks (never wall time) and stop a prewarm at a known chunk. Works on any KVContext (toy or real)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from llamanode import PrewarmHandle

PREWARM_THREAD = "llamanode-prewarm"


def wait_until(predicate: Callable[[], bool], timeout: float = 60, interval: float = 0.002, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s{': ' + what if what else ''}"
        time.sleep(interval)


def stop_asked(handle: PrewarmHandle) -> bool:
    """Whether someone has asked this prewarm to stop (a running one's chunk in flight is interrupted first)."""
    return handle.done or handle.report().by is not None


class ChunkGate:
    """Wraps the prefill of each context given (or wrapped later): prewarm threads wait for a permit per
    chunk; every chunk is logged as (thread name, start position, size) after it ran."""

    def __init__(self, *contexts: Any) -> None:
        self._cv = threading.Condition()
        self._permits = 0
        self.log: list[tuple[str, int, int]] = []
        self.waiting = False  # a prewarm thread waits for a permit (its next chunk is "in flight")
        for ctx in contexts:
            self.wrap(ctx)

    def wrap(self, ctx: Any) -> Any:
        inner = ctx.prefill

        def prefill(tokens: Sequence[int], start: int) -> None:
            self._pass()
            inner(tokens, start)
            with self._cv:
                self.log.append((threading.current_thread().name, start, len(tokens)))
                self._cv.notify_all()

        ctx.prefill = prefill
        return ctx

    def _pass(self) -> None:
        if threading.current_thread().name != PREWARM_THREAD:
            return
        with self._cv:
            self.waiting = True
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._permits > 0)
            self._permits -= 1
            self.waiting = False

    def allow(self, chunks: int) -> None:
        with self._cv:
            self._permits += chunks
            self._cv.notify_all()

    def open(self) -> None:
        """Let every chunk through from now on."""
        self.allow(1 << 30)

    def prewarm_chunks(self) -> int:
        with self._cv:
            return self._prewarm_chunks()

    def run_chunks(self, n: int, timeout: float = 60) -> None:
        """Let n more chunks through, then wait until they ran and a prewarm waits for its next one."""
        with self._cv:
            goal = self._prewarm_chunks() + n
        self.allow(n)
        with self._cv:
            done = self._cv.wait_for(lambda: self._prewarm_chunks() >= goal and self.waiting, timeout)
        assert done, f"the prewarm did not reach {n} chunks"

    def _prewarm_chunks(self) -> int:
        return sum(1 for name, _, _ in self.log if name == PREWARM_THREAD)


class Call(threading.Thread):
    """A foreground call in a thread of its own, so the test can count the prewarm's chunks meanwhile."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(name="foreground")
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the call waited for a prewarm chunk"
        if self.error is not None:
            raise self.error
        return self.result


def gate_pool(pool: Any) -> ChunkGate:
    """A gate that every context the pool opens from now on goes through."""
    gate = ChunkGate()
    backend = pool.backend
    inner = backend.open_context
    backend.open_context = lambda config: gate.wrap(inner(config))
    return gate


def stop_after(gate: ChunkGate, handle: Any, chunks: int, fn: Callable[[], Any]) -> Call:
    """Let the prewarm run `chunks` chunks, make the call while the next chunk waits at the gate (in flight),
    then let that one chunk go: its interrupt is pending, so it is dropped before it decodes (an interruptible
    prewarm; a carry_on one prefills it) and the call must then complete without any further permit."""
    gate.run_chunks(chunks)
    call = Call(fn)
    wait_until(lambda: stop_asked(handle))
    gate.allow(1)
    return call
