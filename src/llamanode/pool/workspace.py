"""Workspaces and their exclusive leases: one thread at a time per workspace, and none once closing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import InvalidInputError, SessionBusyError, SessionClosedError
from ..kvsession import KVSession
from ..session import ForkOrigin
from ..snapshot import token_chain
from ..store import SnapshotEntry
from ..workspace_id import check_workspace_id
from .held import Signature
from .keeping import keep_rank, on_probation
from .stats import WorkspaceInfo

__all__ = ["Workspace", "Workspaces"]


@dataclass(eq=False)
class Workspace:
    id: str
    lease: threading.Lock = field(default_factory=threading.Lock)
    holder: int | None = None  # thread holding the lease
    waiters: int = 0
    session: KVSession | None = None
    kv_bytes: int = 0
    tokens: tuple[int, ...] = ()  # resident at the last release (routing, info)
    stable: int = 0  # tokens[:stable] are reusable by ensure_prefix
    chain: tuple[str, ...] = ()
    signature: Signature | None = None  # of the live state at the last release
    snapshot: SnapshotEntry | None = None
    snapshot_signature: Signature | None = None  # of the state the snapshot holds
    tick: int = 0  # LRU order
    last_used: float = 0.0
    dropped: bool = False
    origin: ForkOrigin | None = None  # the workspace began as a fork (kept while the pool runs)
    uses: int = 0  # leases for turns, plus forks taken from it (keeping.on_probation)

    def remember(self, session: KVSession) -> None:
        """Record what the session holds now: for routing, for info, and to know whether it is on disk."""
        report = session.explain_context()
        tokens = session.resident_tokens()
        self.stable = report.resident_tokens - report.generated_tokens
        if tokens != self.tokens:
            self.tokens, self.chain = tokens, token_chain(tokens)
        self.signature = (tokens, report.prefix_tokens, report.generated_tokens)

    def forget_live(self) -> None:
        """Its session holds no state (an unfinished prefill): info and routing fall back to the snapshot."""
        self.tokens, self.chain, self.stable, self.signature = (), (), 0, None

    def info(self, pending: bool) -> WorkspaceInfo:
        entry = self.snapshot
        return WorkspaceInfo(
            id=self.id,
            live=self.session is not None,
            resident_tokens=len(self.tokens) if self.tokens or entry is None or pending else entry.n_tokens,
            kv_bytes=self.kv_bytes,
            snapshot_bytes=entry.size_bytes if entry is not None else 0,
            last_used=self.last_used,
            forked_from=self.origin.source if self.origin is not None else None,
            uses=self.uses,
        )


class Workspaces:
    """The pool's workspaces by id, their leases, LRU order and the pool's open/closing/closed state.
    Guarded by the pool's condition (re-entrant); a lease itself is a per-workspace lock."""

    def __init__(self, cv: threading.Condition) -> None:
        self._cv = cv
        self._ws: dict[str, Workspace] = {}
        self._clock = 0
        self.closing = False  # close() has begun: no new leases
        self.closed = False

    def check_open(self, leasing: bool = False) -> None:
        if self.closed or (leasing and self.closing):
            raise SessionClosedError("the session pool is closed")

    def __iter__(self) -> Iterator[Workspace]:
        return iter(list(self._ws.values()))

    def get(self, workspace_id: str) -> Workspace | None:
        return self._ws.get(workspace_id)

    def add(self, ws: Workspace) -> None:
        self._ws[ws.id] = ws

    def lease(self, workspace_id: str, create: bool) -> Workspace:
        """Wait for the workspace's lease (creating the workspace if asked); refuse a nested lease."""
        check_workspace_id(workspace_id)
        me = threading.get_ident()
        while True:
            with self._cv:
                self.check_open(leasing=True)
                ws = self._ws.get(workspace_id)
                if ws is None:
                    if not create:
                        raise InvalidInputError(f"no workspace {workspace_id!r}")
                    ws = self._ws[workspace_id] = Workspace(workspace_id)
                if ws.holder == me:
                    raise SessionBusyError(f"this thread already holds workspace {workspace_id!r}")
                ws.waiters += 1
            ws.lease.acquire()
            with self._cv:
                ws.waiters -= 1
                if ws.dropped or self.closing:
                    ws.lease.release()
                    self.check_open(leasing=True)
                    continue
                ws.holder = me
                others = [w.session for w in self._ws.values() if w is not ws and w.session is not None]
            for session in others:  # the pool's gate holds prewarms back from their next chunk on; this one
                session.pause_prewarm()  # stops the chunk in flight, which would share the cores with the lease
            return ws

    def touch(self, ws: Workspace) -> None:
        """Mark ws most recently used."""
        with self._cv:
            self._clock += 1
            ws.tick, ws.last_used = self._clock, time.time()

    def unlease(self, ws: Workspace, pending: bool) -> None:
        """Give the lease back; a workspace with nothing resident, on disk or pending is gone."""
        with self._cv:
            if ws.session is None and ws.snapshot is None and not pending and not ws.dropped:
                self.forget(ws)
            ws.holder = None
            ws.lease.release()
            self._cv.notify_all()

    def forget(self, ws: Workspace) -> None:
        with self._cv:
            ws.dropped = True
            self._ws.pop(ws.id, None)

    def take_victim(self, me: Workspace) -> Workspace | None:
        """The live, unleased workspace to evict first, leased for eviction (pool lock held): workspaces someone
        waits for, and prewarming ones, come last; then keeping.keep_rank."""
        for ws in self._victims(me):
            if ws.lease.acquire(blocking=False):
                ws.holder = threading.get_ident()
                return ws
        return None

    def lowest_live(self, besides: Workspace) -> Workspace | None:
        """The live workspace, leased or not, that keep_rank would evict first (pool lock held)."""
        live = [w for w in self._ws.values() if w.session is not None and w is not besides]
        return min(live, key=keep_rank, default=None)

    def _victims(self, me: Workspace) -> list[Workspace]:
        live = [w for w in self._ws.values() if w.session is not None and w is not me and w.holder is None]
        return sorted(live, key=lambda w: (w.waiters > 0, w.session is not None and w.session.prewarming, keep_rank(w)))

    @contextmanager
    def held(self, ws: Workspace) -> Iterator[None]:
        """Hold ws's lease, waiting for it (close() does, whatever the pool's state)."""
        with ws.lease:
            ws.holder = threading.get_ident()
            try:
                yield
            finally:
                ws.holder = None

    # -- questions asked under the pool lock ------------------------------------------------------
    def any_leased(self) -> bool:
        return any(w.holder is not None for w in self._ws.values())

    def leased_ids(self) -> set[str]:
        return {w.id for w in self._ws.values() if w.holder is not None}

    def live_held_by_others(self, me: int) -> bool:
        """A live workspace leased by another thread: its lease will end and free room."""
        return any(w.session is not None and w.holder not in (None, me) for w in self._ws.values())

    def live_held_by(self, thread: int, besides: Workspace) -> bool:
        return any(w.session is not None and w.holder == thread for w in self._ws.values() if w is not besides)

    def on_probation(self) -> int:
        """How many workspaces are forks on probation (keeping.on_probation)."""
        return sum(1 for w in self._ws.values() if on_probation(w))
