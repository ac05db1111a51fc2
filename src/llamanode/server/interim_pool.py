"""A stand-in for llamanode.pool.SessionPool until it lands: same surface, no eviction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import InvalidInputError
from ..kvsession import KVSession, common_prefix_len
from ..session import open_session

__all__ = ["InterimPool", "PoolStats", "WorkspaceInfo"]


@dataclass(frozen=True)
class WorkspaceInfo:
    id: str
    live: bool
    resident_tokens: int
    kv_bytes: int
    snapshot_bytes: int
    last_used: float


@dataclass(frozen=True)
class PoolStats:
    live: int
    evicted: int
    restores: int
    evictions: int


class InterimPool:
    def __init__(self, model_path: str | None = None, config: Config | None = None, **_: Any) -> None:
        self._model_path = model_path
        self._config = config or Config()
        self._sessions: dict[str, KVSession] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._used: dict[str, float] = {}
        self._guard = threading.Lock()
        self._probe = self._open()

    def _open(self) -> KVSession:
        session = open_session(self._model_path, self._config)
        assert isinstance(session, KVSession)
        return session

    @contextmanager
    def session(self, workspace_id: str) -> Iterator[KVSession]:
        with self._guard:
            lock = self._locks.setdefault(workspace_id, threading.Lock())
        with lock:
            with self._guard:
                if workspace_id not in self._sessions:
                    self._sessions[workspace_id] = self._open()
                session = self._sessions[workspace_id]
            try:
                yield session
            finally:
                self._used[workspace_id] = time.time()

    def fork(self, src: str, dst: str) -> None:
        with self.session(src) as source:
            state = source.export_state()
        with self.session(dst) as target:
            target.import_state(state)

    def drop(self, workspace_id: str) -> None:
        with self._guard:
            session = self._sessions.pop(workspace_id, None)
            self._locks.pop(workspace_id, None)
        if session is None:
            raise InvalidInputError(f"no workspace {workspace_id!r}")
        session.close()

    def workspaces(self) -> list[WorkspaceInfo]:
        with self._guard:
            items = list(self._sessions.items())
        return [
            WorkspaceInfo(k, True, len(s.resident_tokens()), s.kv_bytes(), 0, self._used.get(k, 0.0)) for k, s in items
        ]

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]:
        best: tuple[str | None, int] = (None, 0)
        with self._guard:
            items = list(self._sessions.items())
        for key, session in items:
            n = common_prefix_len(session.resident_tokens(), tokens)
            if n >= min_tokens and n > best[1]:
                best = (key, n)
        return best

    def tokenize(self, text: str) -> list[int]:
        return self._probe.tokenize(text)

    def stats(self) -> PoolStats:
        return PoolStats(live=len(self._sessions), evicted=0, restores=0, evictions=0)

    def checkpoint(self, workspace_id: str) -> None:
        return None

    def close(self) -> None:
        with self._guard:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
        self._probe.close()
