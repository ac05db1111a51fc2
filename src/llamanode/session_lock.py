"""The lock that serialises a session's calls across threads (one call, or one open decode stream, at a time)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import SessionBusyError

__all__ = ["SessionLock"]


class SessionLock:
    """Serializes calls across threads; refuses re-entry from the thread that holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            raise SessionBusyError("this thread still holds an open decode stream of the session; close it first")
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None
