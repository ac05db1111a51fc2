"""A context opened ahead of need: made while no turn runs, so the next new or forked workspace takes it.

Opening a context allocates and clears its whole KV buffer (at a 32k window, 750 MB: 0.3 s here, and up to
2 s on a VM whose fresh pages the host must first back). A fork for an agent's second session paid that
inside its request. The pool's Room keeps one spare context; this thread refills it whenever the budget
has room for one more session and no lease is held, at the lowest CPU priority (a request that arrives
meanwhile keeps the cores). The spare is accounted like a live session, and the Room closes it first when
something else needs the memory.
"""

from __future__ import annotations

import logging
import threading

from ..errors import LlamaNodeError
from ..prewarm import Gate
from .room import Room
from .writer import yield_cpu_to_compute

__all__ = ["SpareMaker"]

_log = logging.getLogger(__name__)


class SpareMaker:
    """The background thread that keeps the Room's spare context ready (SessionPool(spare_ahead=True))."""

    def __init__(self, room: Room, idle: Gate) -> None:
        """idle: the pool's gate for background work (SessionPool._background_turn), as prewarms pass it."""
        self._room = room
        self._idle = idle
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="llamanode-spare", daemon=True)

    def start(self) -> None:
        """Start the thread; it opens nothing until want() (the pool asks after each lease)."""
        self._thread.start()

    def want(self) -> None:
        """A spare may be missing now (a lease ended, or one was taken): look once no turn runs."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread (a context being opened is finished, then closed by the Room: the pool is closing)."""
        self._stopping = True
        self._wanted.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _main(self) -> None:
        yield_cpu_to_compute()  # clearing a new context's memory waits for idle cores, as snapshot writes do
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            self._idle(lambda: self._stopping)
            if self._stopping:
                return
            try:
                self._room.prepare_spare()
            except LlamaNodeError as exc:  # no spare: the next admission opens its context itself, as before
                _log.warning("could not open a spare context ahead of need: %s", exc)
