"""A chunk gate for prewarm tests: a prewarm thread's prefill chunks pass one permit at a time, so tests
count chunks (never wall time) and stop a prewarm at a known chunk. Works on any KVContext (toy or real)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from llamanode import PrewarmHandle

PREWARM_THREAD = "llamanode-prewarm"


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def stop_asked(handle: PrewarmHandle) -> bool:
    """Whether someone has asked this prewarm to stop (a running one finishes its chunk in flight first)."""
    return handle.done or handle.report().by is not None


class ChunkGate:
    """Wraps ctx.prefill: prewarm threads wait for a permit per chunk; every chunk is logged as
    (thread name, start position, size) after it ran."""

    def __init__(self, ctx: Any) -> None:
        self._inner = ctx.prefill
        self._cv = threading.Condition()
        self._permits = 0
        self.log: list[tuple[str, int, int]] = []
        self.waiting = False  # a prewarm thread waits for a permit (its next chunk is "in flight")
        ctx.prefill = self.prefill

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        name = threading.current_thread().name
        if name == PREWARM_THREAD:
            with self._cv:
                self.waiting = True
                self._cv.notify_all()
                self._cv.wait_for(lambda: self._permits > 0)
                self._permits -= 1
                self.waiting = False
        self._inner(tokens, start)
        with self._cv:
            self.log.append((name, start, len(tokens)))
            self._cv.notify_all()

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

    def run_chunks(self, n: int, timeout: float = 120) -> None:
        """Let n more chunks through, then wait until the prewarms ran n in all and one waits for its next."""
        self.allow(n)
        with self._cv:
            done = self._cv.wait_for(lambda: self._prewarm_chunks() >= n and self.waiting, timeout)
        assert done, f"the prewarm did not reach {n} chunks"

    def _prewarm_chunks(self) -> int:
        return sum(1 for name, _, _ in self.log if name == PREWARM_THREAD)
