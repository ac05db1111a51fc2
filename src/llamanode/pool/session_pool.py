"""SessionPool: the public face of the pool package, composing its parts (see the package docstring)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from ..backends.base import Backend
from ..config import Config
from ..errors import InvalidInputError
from ..identity import SnapshotIdentity
from ..kvsession import KVSession
from ..prewarm import PrewarmHandle
from ..registry import load_backend
from ..session import ForkOrigin, PrefixInput, default_model_path
from ..store import SnapshotStore
from .forking import Forks
from .kept import KeptStates
from .ledger import MemoryLedger, Sizes
from .records import SnapshotRecords
from .restore import StateMover
from .room import Room
from .routing import longest_prefix
from .spare import SpareMaker
from .stats import Gauges, PoolStats, StatsRecorder, WorkspaceInfo
from .workspace import Workspace, Workspaces
from .writer import WRITE_DEFER_S, SnapshotWriter

__all__ = ["SessionPool"]


class SessionPool:
    """Workspaces addressed by id over one model: leased exclusively, evicted least recently used first
    to snapshots (so eviction loses nothing), restored on the next lease, verified before loading."""

    def __init__(
        self,
        model_path: str | None = None,
        config: Config | None = None,
        *,
        store_dir: Path | str | None = None,
        memory_budget_bytes: int | None = None,
        disk_budget_bytes: int | None = None,
        keep_written_states: bool = True,
        write_defer_s: float = WRITE_DEFER_S,
        store: SnapshotStore | None = None,
        spare_ahead: bool = False,
    ) -> None:
        """store: an open, writable SnapshotStore to use instead of opening one at store_dir with
        disk_budget_bytes; the pool owns it from here (and closes it, also if construction fails).
        spare_ahead: keep one more context open, while the budget has room for it, so a new or forked
        workspace need not open one (pool/spare.py; the server turns it on)."""
        self.model_path = str(model_path or default_model_path())
        self.config = config or Config()
        with ExitStack() as undo:  # a failed construction closes what it opened, in reverse
            if store is not None:
                undo.callback(store.close)
                _check_store(store, store_dir, disk_budget_bytes)
            self._backend = load_backend(self.model_path, self.config)
            undo.callback(self._backend.close)
            self._backend_identity = self._backend.identity(self.config)
            per_token = self._backend.info.kv_bytes_per_token[self.config.kv_type]
            sizes = Sizes.of(per_token, self._backend.padded_ctx(self.config.num_ctx))
            _check_budget(memory_budget_bytes, sizes)
            if store is None:
                store = SnapshotStore(store_dir, disk_budget_bytes=disk_budget_bytes)
                undo.callback(store.close)
            self._store = store
            self._assemble(sizes, memory_budget_bytes, keep_written_states, write_defer_s)
            self._spares = SpareMaker(self._room, self._background_turn) if spare_ahead else None
            if self._spares is not None:
                self._spares.start()
            undo.pop_all()

    def _assemble(self, sizes: Sizes, budget: int | None, keep_written_states: bool, write_defer_s: float) -> None:
        self._cv = threading.Condition(threading.RLock())  # one lock for every part's bookkeeping
        self._stats = StatsRecorder()
        self._ledger = MemoryLedger(self._cv, sizes, budget)
        self._workspaces = Workspaces(self._cv)
        self._kept = KeptStates()
        self._records = SnapshotRecords(self._cv, self._workspaces, self._kept, self._stats, keep_written_states)
        self._writer = SnapshotWriter(self._cv, self._store, self._stats, self._records, write_defer_s)
        self._records.attach(self._writer)
        self._room = Room(
            self._cv, self._ledger, self._workspaces, self._kept, self._writer, self._records, self._stats, self._open
        )
        self._mover = StateMover(
            self._cv, self._room, self._ledger, self._writer, self._kept, self._records, self._store, self._stats
        )
        parts = (self._workspaces, self._room, self._mover, self._writer, self._stats)
        self._forks = Forks(self._cv, *parts, self._release)
        for entry in self._store.entries():
            self._workspaces.add(Workspace(entry.workspace_id, snapshot=entry, last_used=entry.last_used))
        self._records.recovered(self._store.recovery.rows_removed)
        self._writer.start()

    # -- settings and sizes ---------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The pool's handle to its model (model info, grammar checks); the pool closes it."""
        return self._backend

    @property
    def memory_budget_bytes(self) -> int | None:
        return self._ledger.budget

    @memory_budget_bytes.setter
    def memory_budget_bytes(self, value: int | None) -> None:
        with self._cv:
            self._ledger.budget = value

    @property
    def keep_written_states(self) -> bool:
        """Keep an evicted state in memory after its write, so a switch back skips reading the file."""
        return self._records.keep_written_states

    @keep_written_states.setter
    def keep_written_states(self, value: bool) -> None:
        self._records.keep_written_states = value

    def state_bytes_estimate(self, n_tokens: int) -> int:
        """An upper bound on the exported state of n_tokens resident tokens."""
        return self._ledger.sizes.state_estimate(n_tokens)

    @property
    def session_kv_bytes(self) -> int:
        """kv_bytes() of each workspace session (its full n_ctx KV allocation)."""
        return self._ledger.sizes.session_bytes

    @property
    def transfer_headroom(self) -> int:
        """Bytes admission keeps free: two full-context states on their way to disk plus one restore."""
        return self._ledger.sizes.headroom

    def budget_for(self, live_sessions: int) -> int:
        """The smallest memory budget that keeps live_sessions workspaces live at once."""
        return self._ledger.sizes.budget_for(live_sessions)

    # -- leases -----------------------------------------------------------------------------------------
    @contextmanager
    def session(self, workspace_id: str) -> Iterator[KVSession]:
        """An exclusive lease of the workspace's live session: restored if evicted, created if new."""
        ws = self._workspaces.lease(workspace_id, create=True)
        try:
            yield self._activate(ws)
        finally:
            self._release(ws)

    def _activate(self, ws: Workspace) -> KVSession:
        """The live session of a leased workspace: a hit, a restore, or a cold start."""
        ws.uses += 1
        if ws.session is not None:
            if not ws.session.explain_context().fatal:
                self._stats.count("hits")
                return ws.session
            self._room.discard(ws)
        session = self._room.admit(ws)
        try:
            self._mover.restore(ws, session)
        except BaseException:
            self._room.discard(ws)  # never leave an empty session in place of an evicted state
            raise
        if ws.origin is not None and session.resident_tokens():
            session.note_fork(ws.origin, just_forked=False)  # the restored state began as that fork
        return session

    def _release(self, ws: Workspace) -> None:
        session = ws.session
        if session is not None and session.explain_context().closed:
            self._room.discard(ws)
        elif session is not None and not session.prewarm_in_session:
            # a prewarm holding the session is read once it has ended; one that waits (started in this lease, or
            # kept waiting by it: the gate) has changed nothing
            ws.remember(session)
        with self._cv:
            self._workspaces.touch(ws)
            self._workspaces.unlease(ws, pending=ws.id in self._writer)
        if self._spares is not None:
            self._spares.want()

    def prewarm(self, workspace_id: str, prefix: PrefixInput | Sequence[tuple[str, str]]) -> PrewarmHandle:
        """Start prefilling the workspace's next prefix in the background and return at once: restored
        first if evicted (created if new), then prewarmed without holding its lease. The next lease's
        ensure_prefix of the same prefix takes over where it stands; anything else done with the session,
        and an eviction, stops it between chunks first (KVSession.prewarm)."""
        ws = self._workspaces.lease(workspace_id, create=True)
        try:
            session = self._activate(ws)
            handle = session.prewarm(prefix if isinstance(prefix, PrefixInput) else session.prefix(prefix))
        finally:
            self._release(ws)
        self._stats.count("prewarms")
        handle.add_done_callback(lambda report: self._stats.prewarm_ended(report.outcome))
        return handle

    # -- the rest of the API ----------------------------------------------------------------------------
    def fork(self, src: str, dst: str) -> ForkOrigin:
        """A new workspace dst with src's resident state (no prefill): exported from src if live, else
        taken from src's state in memory or its snapshot."""
        return self._forks.fork(src, dst)

    def fork_nearest(self, dst: str, tokens: Sequence[int], min_tokens: int) -> ForkOrigin | None:
        """If dst does not exist: make it a fork of the live or stored workspace whose reusable tokens share
        the longest prefix with tokens, at least min_tokens of them (the source stays as it is, and stays live
        unless it is the one eviction would pick). None, and nothing changed, otherwise."""
        return self._forks.fork_nearest(dst, tokens, min_tokens, self._identity_key())

    def has_workspace(self, workspace_id: str) -> bool:
        """Whether the pool knows workspace_id (live, evicted, stored, or being made): a hint read without
        the pool lock; fork_nearest decides under the leases."""
        return self._workspaces.get(workspace_id) is not None

    def drop(self, workspace_id: str) -> None:
        """Forget a workspace: its live session, any state on its way to disk, and its snapshot."""
        ws = self._workspaces.lease(workspace_id, create=False)
        try:
            self._room.discard(ws)
            self._writer.settle(workspace_id, keep=False)
            with self._cv:
                self._kept.drop(workspace_id)
            self._store.remove(workspace_id)
            ws.snapshot = None
        finally:
            with self._cv:
                self._workspaces.forget(ws)
                self._workspaces.unlease(ws, pending=False)

    def checkpoint(self, workspace_id: str) -> None:
        """Make the workspace's current state durable on disk now, without evicting it (no-op if it is)."""
        ws = self._workspaces.lease(workspace_id, create=False)
        try:
            session = ws.session
            if session is not None:
                session.settle_prewarm("checkpoint")
            if session is not None and _holds_state(session):
                self._mover.write_now(ws, session)
            else:  # nothing live, or an unfinished prefill (no state): the last state on its way is made durable
                self._writer.settle(workspace_id, keep=True)
        finally:
            self._release(ws)

    def workspaces(self) -> list[WorkspaceInfo]:
        with self._cv:
            items = [(w, w.id in self._writer) for w in self._workspaces]
        return [w.info(pending) for w, pending in sorted(items, key=lambda item: -item[0].tick)]

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]:
        """The workspace (live, evicted, or on disk under this pool's identity) whose reusable resident tokens
        share the longest prefix with tokens, and that length; (None, 0) below min_tokens."""
        with self._cv:
            candidates = [(w, w.session is not None) for w in self._workspaces]
        return longest_prefix(tokens, candidates, self._identity_key(), min_tokens)

    def _identity_key(self) -> str:
        """The identity key of this pool's states (stored snapshots of another are not routed to)."""
        with self._cv:
            identity = replace(self._backend_identity, n_ctx=self._ledger.sizes.n_ctx)
        return SnapshotIdentity.of(identity, self.config).key()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of text with the pool's model, as ensure_prefix would make them (for routing)."""
        self._workspaces.check_open(leasing=True)
        return self._backend.tokenize(text, self._backend_identity.add_bos)

    def stats(self) -> PoolStats:
        with self._cv:
            rows = list(self._workspaces)
            gauges = Gauges(
                live_workspaces=sum(1 for w in rows if w.session is not None),
                evicted_workspaces=sum(
                    1 for w in rows if w.session is None and (w.snapshot is not None or w.id in self._writer)
                ),
                live_bytes=self._ledger.live_bytes(),
                peak_live_bytes=self._ledger.peak,
                memory_budget_bytes=self._ledger.budget,
                snapshot_bytes=self._store.total_bytes() if not self._workspaces.closed else 0,
                disk_budget_bytes=self._store.disk_budget_bytes,
                pending_writes=len(self._writer),
                kept_states=len(self._kept),
                forked_workspaces=sum(1 for w in rows if w.origin is not None),
                on_probation=self._workspaces.on_probation(),
            )
            return self._stats.report(gauges)

    def close(self) -> None:
        """Snapshot every live workspace whose state is not on disk, wait for pending writes, free
        everything. Idempotent."""
        with self._cv:
            if self._workspaces.closed or self._workspaces.closing:
                return
            self._workspaces.closing = True
            self._writer.hurry()
            items = list(self._workspaces)
        if self._spares is not None:
            self._spares.stop()  # a context it is opening now is closed by the Room (the pool is closing)
        try:
            for ws in items:
                self._close_workspace(ws)
            self._writer.flush()
        finally:
            with self._cv:
                self._workspaces.closed = True
                self._kept.clear()
                spare = self._room.take_spare()
                self._cv.notify_all()
            if spare is not None:
                spare.close()
            self._writer.stop(timeout=60)
            self._backend.close()
            self._store.close()

    def _close_workspace(self, ws: Workspace) -> None:
        with self._workspaces.held(ws):
            if ws.dropped or ws.session is None:
                return
            try:
                session = ws.session
                session.settle_prewarm("pool close")
                if _holds_state(session) and not session.explain_context().fatal:
                    self._mover.write_now(ws, session)
            finally:
                self._room.discard(ws)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> KVSession:
        return KVSession(self._backend.open_context(self.config), self.config, gate=self._background_turn)

    def _background_turn(self, stopping: Callable[[], bool]) -> None:
        """A prewarm's next chunk waits while any workspace is leased: requests go first, and two
        computations never share the cores (OpenMP threads spinning against each other)."""
        with self._cv:
            while self._workspaces.any_leased() and not stopping():
                self._cv.wait(0.02)  # polled: a stop is asked under the prewarm's own lock


def _holds_state(session: KVSession) -> bool:
    """Whether the session holds a state to write (an unfinished prefill, e.g. a cancelled prewarm, is none)."""
    report = session.explain_context()
    return report.resident_tokens > 0 and report.manifest is not None


def _check_budget(budget: int | None, sizes: Sizes) -> None:
    """Refuse, before anything is opened, a budget that cannot hold one session and its transfers."""
    need = sizes.budget_for(1)
    if budget is not None and budget < need:
        raise InvalidInputError(
            f"memory budget {budget} B cannot hold one session: it needs {need} B"
            f" ({sizes.session_bytes} B KV + {sizes.headroom} B transfer headroom)"
        )


def _check_store(store: SnapshotStore, store_dir: Path | str | None, disk_budget_bytes: int | None) -> None:
    if store_dir is not None or disk_budget_bytes is not None:
        raise InvalidInputError("give an open store, or store_dir and disk_budget_bytes, not both")
    if not store.exclusive:
        raise InvalidInputError("the pool needs a writable store (SnapshotStore(exclusive=True))")
