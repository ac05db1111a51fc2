"""SessionPool: many workspaces over one loaded model, a memory budget, and LRU eviction to disk snapshots.

Accounting (pool.stats().live_bytes): every live session's kv_bytes() (its full n_ctx KV allocation), the
pool's small tokenizer session, and every state buffer that exists: exports and restores in progress and
evicted states waiting for the background writer. A state of S bytes holds S: llama.cpp exports straight
into it and imports straight from it. Admission keeps `transfer_headroom` free: two evictions on their way to
disk plus one restore, so a switch does not wait for the writer. The writer runs at the lowest CPU
priority and waits for a moment without leases (WRITE_DEFER_S at most, none if memory or a checkpoint
needs the write); a state restored before its write starts is not written. See budget_for().

A switch reuses the evicted workspace's llama context (KVSession.reset) instead of allocating a new one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend
from .config import Config
from .errors import (
    InvalidInputError,
    MemoryBudgetError,
    SessionBusyError,
    SessionClosedError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
)
from .kvsession import KVSession
from .prefix import common_prefix_len
from .registry import load_backend
from .session import SessionState, default_model_path
from .snapshot import TOKEN_BLOCK, SnapshotIdentity, token_chain
from .store import SnapshotEntry, SnapshotStore
from .workspace_id import check_workspace_id

__all__ = ["MissRecord", "PoolStats", "SessionPool", "WorkspaceInfo"]

_STATE_SLACK_PER_TOKEN = 64  # token ids, prefix text and cell metadata, per token (generous)
_STATE_SLACK = 1 << 20
_RECENT_MISSES = 32
# An evicted state is written when no lease is held (no turn is computing), when its memory or its
# durability is asked for, or at the latest this long after eviction: a write during a turn slows it.
WRITE_DEFER_S = 5.0
_RECOVERY_DETAIL = "snapshot refused at startup: its file was missing, truncated or had a damaged header"
_NEW = ("new", "", "no snapshot")
Signature = tuple[tuple[int, ...], int, int]  # resident tokens, prefix tokens, generated tokens


@dataclass(frozen=True)
class WorkspaceInfo:
    """One workspace: live (KV in memory) or evicted (its snapshot on disk, or on its way there)."""

    id: str
    live: bool
    resident_tokens: int
    kv_bytes: int
    snapshot_bytes: int
    last_used: float


@dataclass(frozen=True)
class MissRecord:
    """A lease that started cold, and why: new | collected | corrupt | mismatch | restore_failed.
    error names the refusal's exception type (SnapshotCorruptError, SnapshotMismatchError...), if any."""

    workspace_id: str
    reason: str
    error: str
    detail: str
    at: float


@dataclass(frozen=True)
class PoolStats:
    """Counters and bytes of a pool. hits + restores + misses = leases that activated a workspace."""

    live_workspaces: int
    evicted_workspaces: int
    live_bytes: int  # accounted now: live KV, the tokenizer session, state buffers
    peak_live_bytes: int
    memory_budget_bytes: int | None
    snapshot_bytes: int
    disk_budget_bytes: int | None
    hits: int  # leases of a live workspace
    restores: int  # leases that restored an evicted workspace (from disk or from a state still being written)
    restores_from_memory: int
    misses: int  # leases that started cold
    miss_reasons: Mapping[str, int]
    evictions: int
    pending_writes: int  # evicted states not yet on disk
    writes_cancelled: int  # evicted states restored from memory before their write began (not written)
    kept_states: int  # evicted states on disk and still in memory (accounted in live_bytes; dropped first)
    snapshots_written: int
    snapshot_failures: int
    collected: int  # snapshots removed by the disk budget
    forks: int
    recent_misses: tuple[MissRecord, ...]
    # Cumulative seconds spent moving states: export (evictions, checkpoints), read (snapshot read and
    # verify), import (into a context), wait (for memory room), write (the background writer's puts).
    transfer_seconds: Mapping[str, float] = field(default_factory=dict)


@dataclass(eq=False)
class _Workspace:
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


@dataclass(eq=False)
class _Pending:
    """An evicted state waiting for (or being written by) the background writer."""

    state: SessionState
    identity: SnapshotIdentity
    nbytes: int  # accounted in the pool's buffers until written or replaced
    signature: Signature
    writing: bool = False
    error: str = ""
    queued_at: float = field(default_factory=time.monotonic)


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
    ) -> None:
        self.model_path = str(model_path or default_model_path())
        self.config = config or Config()
        self.memory_budget_bytes = memory_budget_bytes
        # Keep an evicted state in memory after its write (accounted, dropped first when room is needed),
        # so a switch back to it imports from memory instead of reading and verifying the file.
        self.keep_written_states = keep_written_states
        self._cv = threading.Condition(threading.Lock())
        self._ws: dict[str, _Workspace] = {}
        self._pending: dict[str, _Pending] = {}
        self._kept: OrderedDict[str, _Pending] = OrderedDict()  # written states still in memory, LRU first
        self._queue: deque[str] = deque()
        self._urgent = 0  # threads waiting for a write (room, checkpoint, close): the writer defers nothing
        self._spare: KVSession | None = None  # an evicted workspace's context, ready for the next one
        self._closed = False
        self._closing = False  # close() has begun: no new leases
        self._clock = 0
        self._kv_live = 0
        self._buffers = 0
        self._peak = 0
        self._counts: Counter[str] = Counter()
        self._miss_reasons: Counter[str] = Counter()
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._recent: deque[MissRecord] = deque(maxlen=_RECENT_MISSES)
        self._lost: dict[str, tuple[str, str, str]] = {}  # id -> (reason, error, detail) of a lost snapshot
        self._store = SnapshotStore(store_dir, disk_budget_bytes=disk_budget_bytes)
        try:
            self._backend = load_backend(self.model_path)
        except BaseException:
            self._store.close()
            raise
        self._anchor_bytes = 0
        self._backend_identity = self._backend.identity(self.config)
        self._per_token = self._backend.info.kv_bytes_per_token[self.config.kv_type]
        self._n_ctx = self._backend.padded_ctx(self.config.num_ctx)
        self._kv_per_session = int(self._per_token * self._n_ctx)
        self._identity = SnapshotIdentity.of(self._backend_identity, self.config)
        self._writer = threading.Thread(target=self._write_loop, name="llamanode-snapshot-writer", daemon=True)
        self._writer.start()
        self._check_budget()
        for entry in self._store.entries():
            self._ws[entry.workspace_id] = _Workspace(entry.workspace_id, snapshot=entry, last_used=entry.last_used)
        for workspace_id in self._store.recovery.rows_removed:
            self._lost[workspace_id] = ("corrupt", SnapshotCorruptError.__name__, _RECOVERY_DETAIL)

    @property
    def backend(self) -> Backend:
        """The pool's handle to its model (model info, grammar checks); the pool closes it."""
        return self._backend

    # -- sizes ---------------------------------------------------------------------------------
    def state_bytes_estimate(self, n_tokens: int) -> int:
        """An upper bound on the exported state of n_tokens resident tokens."""
        return int(n_tokens * (self._per_token + _STATE_SLACK_PER_TOKEN)) + _STATE_SLACK

    @property
    def session_kv_bytes(self) -> int:
        """kv_bytes() of each workspace session (its full n_ctx KV allocation)."""
        return self._kv_per_session

    @property
    def transfer_headroom(self) -> int:
        """Bytes admission keeps free: two full-context states on their way to disk plus one restore."""
        return 3 * self.state_bytes_estimate(self._n_ctx)

    def budget_for(self, live_sessions: int) -> int:
        """The smallest memory budget that keeps live_sessions workspaces live at once."""
        return self._anchor_bytes + live_sessions * self._kv_per_session + self.transfer_headroom

    def _check_budget(self) -> None:
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < self.budget_for(1):
            need = self.budget_for(1)
            self.close()
            raise InvalidInputError(
                f"memory budget {self.memory_budget_bytes} B cannot hold one session: it needs {need} B"
                f" ({self._kv_per_session} B KV + {self.transfer_headroom} B transfer headroom"
                f" + {self._anchor_bytes} B tokenizer context)"
            )

    # -- leasing ---------------------------------------------------------------------------------
    @contextmanager
    def session(self, workspace_id: str) -> Iterator[KVSession]:
        """An exclusive lease of the workspace's live session: restored if evicted, created if new."""
        ws = self._lease(workspace_id, create=True)
        try:
            yield self._activate(ws)
        finally:
            self._release(ws)

    def _lease(self, workspace_id: str, create: bool) -> _Workspace:
        check_workspace_id(workspace_id)
        me = threading.get_ident()
        while True:
            with self._cv:
                self._check_open(leasing=True)
                ws = self._ws.get(workspace_id)
                if ws is None:
                    if not create:
                        raise InvalidInputError(f"no workspace {workspace_id!r}")
                    ws = self._ws[workspace_id] = _Workspace(workspace_id)
                if ws.holder == me:
                    raise SessionBusyError(f"this thread already holds workspace {workspace_id!r}")
                ws.waiters += 1
            ws.lease.acquire()
            with self._cv:
                ws.waiters -= 1
                if ws.dropped or self._closing:
                    ws.lease.release()
                    self._check_open(leasing=True)
                    continue
                ws.holder = me
                return ws

    def _release(self, ws: _Workspace) -> None:
        session = ws.session
        if session is not None and session.explain_context().closed:
            self._discard_session(ws)
        elif session is not None:
            self._remember_resident(ws, session)
        with self._cv:
            self._clock += 1
            ws.tick, ws.last_used = self._clock, time.time()
            self._unlease_locked(ws)

    def _unlease_locked(self, ws: _Workspace) -> None:
        if ws.session is None and ws.snapshot is None and ws.id not in self._pending and not ws.dropped:
            ws.dropped = True  # nothing resident, nothing on disk: the workspace is gone
            self._ws.pop(ws.id, None)
        ws.holder = None
        ws.lease.release()
        self._cv.notify_all()

    def _remember_resident(self, ws: _Workspace, session: KVSession) -> None:
        report = session.explain_context()
        tokens = session.resident_tokens()
        ws.stable = report.resident_tokens - report.generated_tokens
        if tokens != ws.tokens:
            ws.tokens, ws.chain = tokens, token_chain(tokens)
        ws.signature = (tokens, report.prefix_tokens, report.generated_tokens)

    def _is_clean(self, ws: _Workspace) -> bool:
        """The live state is already on disk, or on its way there."""
        pending = self._pending.get(ws.id)
        if pending is not None and not pending.error:
            return ws.signature == pending.signature
        return ws.snapshot is not None and ws.signature == ws.snapshot_signature

    def _activate(self, ws: _Workspace) -> KVSession:
        """The live session of a leased workspace: a hit, a restore, or a cold start."""
        if ws.session is not None:
            if not ws.session.explain_context().fatal:
                self._count("hits")
                return ws.session
            self._discard_session(ws)
        session = self._admit(ws)
        with self._cv:
            pending = self._pending.get(ws.id)
            kept = self._take_kept(ws)
        try:
            if pending is not None:
                self._restore_from_memory(ws, session, pending)
            elif kept is not None:
                self._restore_from_kept(ws, session, kept)
            elif ws.snapshot is not None:
                self._restore(ws, session)
            else:
                self._miss(ws, session, *self._lost.pop(ws.id, _NEW))
        except BaseException:
            self._discard_session(ws)  # never leave an empty session in place of an evicted state
            raise
        return session

    # -- admission and eviction -------------------------------------------------------------------
    def _admit(self, ws: _Workspace) -> KVSession:
        """A session for ws: an evicted workspace's context, reset, or a new one within the budget."""
        spare = self._make_room(ws, self._kv_per_session, kind="session")
        if spare is not None:
            try:
                spare.reset()
            except BaseException:
                self._close_spare(spare)
                raise
            session = spare
        else:
            try:
                session = self._open(self.config)
            except BaseException:
                with self._cv:
                    self._kv_live -= self._kv_per_session
                    self._cv.notify_all()
                raise
        with self._cv:
            actual = session.kv_bytes()
            if spare is None:
                self._kv_live += actual - self._kv_per_session
            self._note_peak()
            ws.session, ws.kv_bytes = session, actual
            if actual != self._kv_per_session or session.num_ctx != self._n_ctx:
                self._kv_per_session, self._n_ctx = actual, session.num_ctx
                self._identity = _identity_of(session)
        return session

    def _make_room(self, me: _Workspace, nbytes: int, kind: str) -> KVSession | None:
        """Wait or evict until nbytes fit, then account them (kind: session KV or a transfer buffer).
        For a session, returns a spare context to reuse (already accounted) when there is one."""
        while True:
            spare: KVSession | None = None
            with self._cv:
                self._check_open()
                if kind == "session" and self._spare is not None:
                    spare, self._spare = self._spare, None
                    return spare
                while (
                    not self._fits(nbytes, kind) and self._kept_stand_in_the_way(kind) and self._drop_one_kept_locked()
                ):
                    pass  # kept states are on disk already: dropping them is free
                if self._fits(nbytes, kind):
                    if kind == "session":
                        self._kv_live += nbytes
                    else:
                        self._buffers += nbytes
                    self._note_peak()
                    return None
                if self._spare is not None:  # a buffer needs the room a spare context takes
                    spare, self._spare = self._spare, None
                    victim = None
                else:
                    victim = None if (kind == "buffer" and self._in_flight()) else self._take_victim(me)
                    if victim is None:
                        self._wait_for_room(me, nbytes, kind)
                        continue
            if spare is not None:
                self._close_spare(spare)
                continue
            assert victim is not None
            try:
                self._evict(victim)
            finally:
                with self._cv:
                    self._unlease_locked(victim)

    def _fits(self, nbytes: int, kind: str) -> bool:
        budget = self.memory_budget_bytes
        if budget is None:
            return True
        base = self._anchor_bytes + self._kv_live
        if kind == "session":
            return base + nbytes + max(self.transfer_headroom, self._buffers) <= budget
        return base + self._buffers + nbytes <= budget

    def _in_flight(self) -> int:
        """Buffer bytes that will free themselves: transfers and writes that have not failed."""
        failed = sum(p.nbytes for p in self._pending.values() if p.error)
        return self._buffers - failed - sum(p.nbytes for p in self._kept.values())

    def _take_victim(self, me: _Workspace) -> _Workspace | None:
        """The least recently used live, unleased workspace, leased for eviction (under the pool lock)."""
        live = [w for w in self._ws.values() if w.session is not None and w is not me and w.holder is None]
        for ws in sorted(live, key=lambda w: (w.waiters > 0, w.tick)):
            if ws.lease.acquire(blocking=False):
                ws.holder = threading.get_ident()
                return ws
        return None

    def _wait_for_room(self, me: _Workspace, nbytes: int, kind: str) -> None:
        """Wait for room that will free itself (a transfer, a write, another thread's lease), or raise."""
        mine = threading.get_ident()
        if self._in_flight() or any(w.session is not None and w.holder not in (None, mine) for w in self._ws.values()):
            began = time.perf_counter()
            with self._urgently():
                self._cv.wait(timeout=1.0)
            self._seconds["wait"] += time.perf_counter() - began  # under the pool lock again
            return
        failed = [p.error for p in self._pending.values() if p.error]
        if failed:
            raise SnapshotError(
                f"no room for {me.id!r}: {len(failed)} evicted state(s) are held in memory because snapshot"
                f" writes failed: {failed[0]}"
            )
        if any(w.session is not None and w.holder == mine for w in self._ws.values() if w is not me):
            raise MemoryBudgetError(
                f"memory budget is full of workspaces this thread holds; cannot make room for {me.id!r}"
            )
        raise SnapshotError(f"{kind} of {nbytes} B for {me.id!r} does not fit the memory budget")

    def _evict(self, ws: _Workspace) -> None:
        """Hand the live state to the writer (unless it is on disk already) and keep the context as a spare.
        The caller holds ws's lease."""
        session = ws.session
        assert session is not None
        self._remember_resident(ws, session)
        healthy = not session.explain_context().fatal
        if healthy and session.resident_tokens() and not self._is_clean(ws):
            self._export_for_writer(ws, session)
        with self._cv:
            ws.session, kv = None, ws.kv_bytes
            ws.kv_bytes = 0
            keep = healthy and self._spare is None and not self._closing
            if keep:
                self._spare = session
            else:
                self._kv_live -= kv
            self._counts["evictions"] += 1
            self._cv.notify_all()
        if not keep:
            session.close()

    def _export_for_writer(self, ws: _Workspace, session: KVSession) -> None:
        held = self._reserve(ws, self.state_bytes_estimate(len(ws.tokens)))
        try:
            with self._timed("export"):
                state = session.export_state()
        except BaseException:
            self._resize(held, 0)
            raise
        size = _state_size(state)
        self._resize(held, size)
        assert ws.signature is not None
        self._enqueue(ws.id, _Pending(state, _identity_of(session), size, ws.signature))

    def _discard_session(self, ws: _Workspace) -> None:
        with self._cv:
            session, ws.session = ws.session, None
            kv, ws.kv_bytes = ws.kv_bytes, 0
        if session is None:
            return
        session.close()
        with self._cv:
            self._kv_live -= kv
            self._cv.notify_all()

    def _close_spare(self, spare: KVSession) -> None:
        kv = spare.kv_bytes()
        spare.close()
        with self._cv:
            self._kv_live -= kv
            self._cv.notify_all()

    # -- the writer --------------------------------------------------------------------------------
    def _enqueue(self, workspace_id: str, pending: _Pending) -> None:
        with self._cv:
            old = self._pending.get(workspace_id)
            if old is not None and not old.writing:
                self._buffers -= old.nbytes  # replaced before it was written
            self._drop_kept_locked(workspace_id)
            self._pending[workspace_id] = pending
            self._queue.append(workspace_id)
            self._cv.notify_all()

    def _write_loop(self) -> None:
        _yield_cpu_to_compute()
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                delay = self._write_delay_locked()
                if delay > 0:
                    self._cv.wait(timeout=delay)
                    continue
                workspace_id = self._queue.popleft()
                pending = self._pending.get(workspace_id)
                if pending is None or pending.writing or pending.error:
                    continue
                pending.writing = True
                protect = self._protected()
            self._write_pending(workspace_id, pending, protect)

    def _write_delay_locked(self) -> float:
        """Seconds the writer should still wait before writing the head of the queue (0: write now)."""
        pending = self._pending.get(self._queue[0])
        if pending is None or pending.writing or pending.error or self._urgent or self._closing:
            return 0.0
        if not any(w.holder is not None for w in self._ws.values()):
            return 0.0  # idle: no turn to slow down
        return max(0.0, pending.queued_at + WRITE_DEFER_S - time.monotonic())

    @contextmanager
    def _urgently(self) -> Iterator[None]:
        """Within this block (pool lock held), the writer writes at once: someone waits for it."""
        self._urgent += 1
        self._cv.notify_all()
        try:
            yield
        finally:
            self._urgent -= 1

    def _write_pending(self, workspace_id: str, pending: _Pending, protect: set[str]) -> None:
        try:
            with self._timed("write"):
                entry, collected = self._store.put(workspace_id, pending.state, pending.identity, protect)
        except Exception as exc:  # the writer must survive anything; the state stays in memory
            with self._cv:
                pending.writing, pending.error = False, str(exc)
                self._counts["snapshot_failures"] += 1
                self._cv.notify_all()
            return
        with self._cv:
            pending.writing = False
            ws = self._ws.get(workspace_id)
            if ws is not None and not ws.dropped:
                ws.snapshot, ws.snapshot_signature = entry, pending.signature
            current = self._pending.get(workspace_id) is pending
            if current:
                del self._pending[workspace_id]
            evicted = ws is not None and ws.session is None and not ws.dropped
            if current and self.keep_written_states and evicted and not self._closing:
                self._drop_kept_locked(workspace_id)
                self._kept[workspace_id] = pending  # its bytes stay accounted in _buffers
            else:
                self._buffers -= pending.nbytes
            self._counts["snapshots_written"] += 1
            self._retry_failed_locked()  # the disk works again
            self._cv.notify_all()
        self._forget_collected(collected)

    def _retry_failed_locked(self) -> None:
        for workspace_id, pending in self._pending.items():
            if pending.error:
                pending.error = ""
                self._queue.append(workspace_id)

    def _protected(self) -> set[str]:
        return {w.id for w in self._ws.values() if w.holder is not None} | set(self._pending)

    def _settle(self, workspace_id: str, keep: bool) -> None:
        """Wait until workspace_id's evicted state is no longer being written; keep=False also drops a
        queued or failed one (a newer state replaces it), keep=True waits until it is on disk (retrying a
        failed write once)."""
        retried = False
        with self._cv:
            while True:
                pending = self._pending.get(workspace_id)
                if pending is None:
                    return
                if keep and pending.error and not retried:
                    retried, pending.error = True, ""
                    self._queue.append(workspace_id)
                    self._cv.notify_all()
                if pending.writing or (keep and not pending.error):
                    with self._urgently():
                        self._cv.wait(timeout=1.0)
                    continue
                if keep:
                    raise SnapshotError(f"the snapshot of {workspace_id!r} could not be written: {pending.error}")
                self._forget_pending_locked(workspace_id)
                return

    def _forget_pending_locked(self, workspace_id: str) -> None:
        """Drop an evicted state that is not being written (queued or failed) and free its bytes."""
        pending = self._pending.pop(workspace_id)
        self._buffers -= pending.nbytes
        self._cv.notify_all()

    # -- snapshots and restores ------------------------------------------------------------------------
    def _snapshot_now(self, ws: _Workspace, session: KVSession) -> None:
        """Write the live state synchronously (checkpoint, close); the caller holds the lease."""
        self._remember_resident(ws, session)
        with self._cv:
            pending = self._pending.get(ws.id)
        if pending is not None and not pending.error and pending.signature == ws.signature:
            self._settle(ws.id, keep=True)  # this very state is being written: wait for it
            return
        self._settle(ws.id, keep=False)
        if self._is_clean(ws):
            return
        held = self._reserve(ws, self.state_bytes_estimate(len(ws.tokens)))
        try:
            with self._timed("export"):
                state = session.export_state()
            self._resize(held, _state_size(state))
            try:
                entry, collected = self._store.put(ws.id, state, _identity_of(session), self._protected())
            except SnapshotError:
                self._count("snapshot_failures")
                raise
            del state
        finally:
            self._resize(held, 0)
        with self._cv:
            ws.snapshot, ws.snapshot_signature = entry, ws.signature
            self._counts["snapshots_written"] += 1
        self._forget_collected(collected)

    def _forget_collected(self, collected: Sequence[str]) -> None:
        with self._cv:
            for workspace_id in collected:
                self._counts["collected"] += 1
                ws = self._ws.get(workspace_id)
                if ws is None:
                    continue
                ws.snapshot, ws.snapshot_signature = None, None
                self._drop_kept_locked(workspace_id)
                if ws.session is None and ws.holder is None and workspace_id not in self._pending:
                    ws.dropped = True
                    self._ws.pop(workspace_id, None)
                    self._lost[workspace_id] = ("collected", "", "snapshot was removed by the disk budget")

    def _restore(self, ws: _Workspace, session: KVSession) -> None:
        """Load the workspace's snapshot into its empty session, or start it cold with the reason."""
        entry = ws.snapshot
        assert entry is not None
        held = self._reserve(ws, entry.size_bytes)
        try:
            with self._timed("read"):
                _, state = self._store.load(ws.id, _identity_of(session))
            with self._timed("import"):
                session.import_state(state)
            del state
        except SnapshotCorruptError as exc:
            self._refused(ws, session, "corrupt", exc, removed=True)
        except SnapshotMismatchError as exc:
            self._refused(ws, session, "mismatch", exc, removed=False)
        except SnapshotError as exc:
            self._store.remove(ws.id)
            self._refused(ws, session, "restore_failed", exc, removed=True)
        else:
            self._remember_resident(ws, session)
            ws.snapshot_signature = ws.signature
            self._count("restores")
        finally:
            self._resize(held, 0)

    def _restore_from_memory(self, ws: _Workspace, session: KVSession, pending: _Pending) -> None:
        """Import an evicted state that is still queued for (or failed) its write: no disk involved."""
        with self._timed("import"):
            session.import_state(pending.state)  # read in place: no buffer beyond the one already accounted
        self._cancel_write(ws.id, pending)
        self._remember_resident(ws, session)
        with self._cv:
            self._counts["restores"] += 1
            self._counts["restores_from_memory"] += 1

    def _cancel_write(self, workspace_id: str, pending: _Pending) -> None:
        """The workspace is live again from pending: unless its write has begun, it is not written (the
        snapshot on disk stays the previous one; the next eviction writes the newer state)."""
        with self._cv:
            if self._pending.get(workspace_id) is pending and not pending.writing:
                self._forget_pending_locked(workspace_id)
                self._counts["writes_cancelled"] += 1

    def _restore_from_kept(self, ws: _Workspace, session: KVSession, kept: _Pending) -> None:
        """Import a written state the pool kept in memory (no read, no verify: these bytes never left
        this process), then free it."""
        try:
            self._restore_from_memory(ws, session, kept)
        finally:
            self._resize([kept.nbytes], 0)

    def _take_kept(self, ws: _Workspace) -> _Pending | None:
        """ws's kept state if it is exactly what its snapshot holds (under the pool lock); the pool stops
        keeping it either way, since the lease makes the workspace live."""
        kept = self._kept_copy(ws)
        if kept is not None:
            del self._kept[ws.id]  # its bytes stay accounted until _restore_from_kept frees them
        else:
            self._drop_kept_locked(ws.id)  # a stale copy, if any
        return kept

    def _kept_copy(self, ws: _Workspace) -> _Pending | None:
        """ws's kept state if it is exactly what ws's snapshot holds."""
        kept = self._kept.get(ws.id)
        if kept is None or ws.snapshot is None or kept.signature != ws.snapshot_signature:
            return None
        return kept

    def _kept_stand_in_the_way(self, kind: str) -> bool:
        """Whether dropping kept states can make room: always for a buffer; for a session only while the
        buffers exceed the headroom a session admission keeps free anyway."""
        return bool(self._kept) and (kind == "buffer" or self._buffers > self.transfer_headroom)

    def _drop_one_kept_locked(self) -> bool:
        """Drop the least recently used kept state of a workspace nobody leases; False if there is none."""
        for workspace_id in self._kept:
            ws = self._ws.get(workspace_id)
            if ws is None or ws.holder is None:
                self._drop_kept_locked(workspace_id)
                return True
        return False

    def _drop_kept_locked(self, workspace_id: str) -> None:
        kept = self._kept.pop(workspace_id, None)
        if kept is not None:
            self._buffers -= kept.nbytes
            self._cv.notify_all()

    def _refused(self, ws: _Workspace, session: KVSession, reason: str, exc: Exception, removed: bool) -> None:
        if removed:
            ws.snapshot, ws.snapshot_signature = None, None
        self._miss(ws, session, reason, type(exc).__name__, f"snapshot refused: {exc}")

    def _miss(self, ws: _Workspace, session: KVSession, reason: str, error: str, detail: str) -> None:
        if reason != "new":
            session.note_cold_start(detail)
        self._remember_resident(ws, session)
        with self._cv:
            self._counts["misses"] += 1
            self._miss_reasons[reason] += 1
            self._recent.append(MissRecord(ws.id, reason, error, detail, time.time()))

    def _reserve(self, ws: _Workspace, nbytes: int) -> list[int]:
        """Account a state buffer of nbytes (waiting or evicting for room); _resize(held, 0) releases it."""
        self._make_room(ws, nbytes, kind="buffer")
        return [nbytes]

    def _resize(self, held: list[int], nbytes: int) -> None:
        with self._cv:
            self._buffers += nbytes - held[0]
            held[0] = nbytes
            self._note_peak()
            self._cv.notify_all()

    # -- the rest of the API -------------------------------------------------------------------------
    def fork(self, src: str, dst: str) -> None:
        """A new workspace dst with src's resident state (no prefill): exported from src if live, else
        loaded from src's snapshot."""
        if src == dst:
            raise InvalidInputError("fork needs two different workspace ids")
        source = self._lease(src, create=False)
        try:
            target = self._lease(dst, create=True)
            try:
                self._fork_into(source, target)
            finally:
                self._release(target)
        finally:
            self._release(source)

    def _fork_into(self, source: _Workspace, target: _Workspace) -> None:
        if target.session is not None or target.snapshot is not None or target.id in self._pending:
            raise InvalidInputError(f"workspace {target.id!r} already exists")
        if self._only_source_can_make_room(source):
            self._evict(source)  # e.g. a budget of one live session: fork through the evicted state
        session = self._admit(target)
        try:
            self._copy_state(source, session)
        except BaseException:
            self._discard_session(target)
            raise
        self._remember_resident(target, session)
        self._count("forks")

    def _only_source_can_make_room(self, source: _Workspace) -> bool:
        with self._cv:
            if source.session is None or self._spare is not None or self._fits(self._kv_per_session, "session"):
                return False
            return not any(w.session is not None and w.holder is None for w in self._ws.values())

    def _copy_state(self, source: _Workspace, session: KVSession) -> None:
        with self._cv:
            pending, kept = self._pending.get(source.id), self._kept_copy(source)
        if source.session is not None:
            if source.session.resident_tokens():
                held = self._reserve(source, self.state_bytes_estimate(len(source.session.resident_tokens())))
                try:
                    session.import_state(source.session.export_state())
                finally:
                    self._resize(held, 0)
        elif pending is not None:
            session.import_state(pending.state)
        elif kept is not None:
            session.import_state(kept.state)
        elif source.snapshot is not None:
            held = self._reserve(source, source.snapshot.size_bytes)
            try:
                session.import_state(self._store.load(source.id, _identity_of(session))[1])
            finally:
                self._resize(held, 0)

    def drop(self, workspace_id: str) -> None:
        """Forget a workspace: its live session, any state on its way to disk, and its snapshot."""
        ws = self._lease(workspace_id, create=False)
        try:
            self._discard_session(ws)
            self._settle(workspace_id, keep=False)
            with self._cv:
                self._drop_kept_locked(workspace_id)
            self._store.remove(workspace_id)
            ws.snapshot = None
        finally:
            with self._cv:
                ws.dropped = True
                self._ws.pop(workspace_id, None)
                self._unlease_locked(ws)

    def checkpoint(self, workspace_id: str) -> None:
        """Make the workspace's current state durable on disk now, without evicting it (no-op if it is)."""
        ws = self._lease(workspace_id, create=False)
        try:
            session = ws.session
            if session is not None and session.resident_tokens():
                self._snapshot_now(ws, session)
            else:
                self._settle(workspace_id, keep=True)
        finally:
            self._release(ws)

    def workspaces(self) -> list[WorkspaceInfo]:
        with self._cv:
            items = [(w, w.id in self._pending) for w in self._ws.values()]
        return [
            WorkspaceInfo(
                id=w.id,
                live=w.session is not None,
                resident_tokens=len(w.tokens) if w.tokens or w.snapshot is None or pending else w.snapshot.n_tokens,
                kv_bytes=w.kv_bytes,
                snapshot_bytes=w.snapshot.size_bytes if w.snapshot is not None else 0,
                last_used=w.last_used,
            )
            for w, pending in sorted(items, key=lambda item: -item[0].tick)
        ]

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]:
        """The workspace (live, evicted, or on disk under this pool's identity) whose reusable resident tokens
        share the longest prefix with tokens, and that length; (None, 0) below min_tokens."""
        query = tuple(tokens)
        query_chain = token_chain(query)
        best: tuple[int, bool, int, str] | None = None
        with self._cv:
            candidates = [(w, w.session is not None) for w in self._ws.values()]
            key = self._identity.key()
        for ws, live in candidates:
            mine, chain, stable = self._routing_view(ws, key)
            n = min(_shared_prefix(query, query_chain, mine, chain), stable)
            rank = (n, live, ws.tick, ws.id)
            if n >= min_tokens and (best is None or rank[:3] > best[:3]):
                best = rank
        return (best[3], best[0]) if best is not None else (None, 0)

    def _routing_view(self, ws: _Workspace, identity_key: str) -> tuple[tuple[int, ...], tuple[str, ...], int]:
        entry = ws.snapshot
        if ws.tokens or entry is None:
            return ws.tokens, ws.chain, ws.stable
        if entry.identity_key != identity_key:
            return (), (), 0
        return entry.tokens, entry.chain, min(entry.stable_len, entry.n_tokens)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of text with the pool's model, as ensure_prefix would make them (for routing)."""
        self._check_open(leasing=True)
        return self._backend.tokenize(text, self._backend_identity.add_bos)

    def stats(self) -> PoolStats:
        with self._cv:
            live = sum(1 for w in self._ws.values() if w.session is not None)
            evicted = sum(
                1 for w in self._ws.values() if w.session is None and (w.snapshot is not None or w.id in self._pending)
            )
            c = self._counts
            return PoolStats(
                live_workspaces=live,
                evicted_workspaces=evicted,
                live_bytes=self._live_bytes(),
                peak_live_bytes=self._peak,
                memory_budget_bytes=self.memory_budget_bytes,
                snapshot_bytes=self._store.total_bytes() if not self._closed else 0,
                disk_budget_bytes=self._store.disk_budget_bytes,
                hits=c["hits"],
                restores=c["restores"],
                restores_from_memory=c["restores_from_memory"],
                misses=c["misses"],
                miss_reasons=dict(self._miss_reasons),
                evictions=c["evictions"],
                pending_writes=len(self._pending),
                writes_cancelled=c["writes_cancelled"],
                kept_states=len(self._kept),
                snapshots_written=c["snapshots_written"],
                snapshot_failures=c["snapshot_failures"],
                collected=c["collected"],
                forks=c["forks"],
                recent_misses=tuple(self._recent),
                transfer_seconds={k: round(v, 6) for k, v in self._seconds.items()},
            )

    def close(self) -> None:
        """Snapshot every live workspace whose state is not on disk, wait for pending writes, free
        everything. Idempotent."""
        with self._cv:
            if self._closed or self._closing:
                return
            self._closing = True
            items = list(self._ws.values())
        try:
            for ws in items:
                self._close_workspace(ws)
            self._flush()
        finally:
            with self._cv:
                self._closed = True
                for workspace_id in list(self._kept):
                    self._drop_kept_locked(workspace_id)
                spare, self._spare = self._spare, None
                self._cv.notify_all()
            if spare is not None:
                spare.close()
            self._writer.join(timeout=60)
            self._backend.close()
            self._store.close()

    def _close_workspace(self, ws: _Workspace) -> None:
        with ws.lease:
            if ws.dropped or ws.session is None:
                return
            ws.holder = threading.get_ident()
            try:
                session = ws.session
                if session.resident_tokens() and not session.explain_context().fatal:
                    self._snapshot_now(ws, session)
            finally:
                self._discard_session(ws)
                ws.holder = None

    def _flush(self) -> None:
        """Wait until the writer has written (or failed) every queued state."""
        with self._cv:
            while any(not p.error for p in self._pending.values()):
                with self._urgently():
                    self._cv.wait(timeout=1.0)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small helpers -------------------------------------------------------------------------------
    def _open(self, config: Config) -> KVSession:
        return KVSession(self._backend.open_context(config), config)

    def _check_open(self, leasing: bool = False) -> None:
        if self._closed or (leasing and self._closing):
            raise SessionClosedError("the session pool is closed")

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            with self._cv:
                self._seconds[name] += time.perf_counter() - began

    def _count(self, name: str) -> None:
        with self._cv:
            self._counts[name] += 1

    def _live_bytes(self) -> int:
        return self._anchor_bytes + self._kv_live + self._buffers

    def _note_peak(self) -> None:
        self._peak = max(self._peak, self._live_bytes())


def _yield_cpu_to_compute() -> None:
    """Run the calling thread at the lowest CPU priority: a snapshot write waits for idle cores
    instead of stalling the threads of the next prefill (which all wait for the slowest)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not permitted: keep the priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _identity_of(session: KVSession) -> SnapshotIdentity:
    return SnapshotIdentity.of(session.identity, session.config)


def _state_size(state: SessionState) -> int:
    return len(state.kv) + len(state.prefix_text) + 4 * len(state.tokens)


def _shared_prefix(a: Sequence[int], chain_a: Sequence[str], b: Sequence[int], chain_b: Sequence[str]) -> int:
    """Common prefix length of a and b: whole blocks by their chained hashes, then token by token."""
    full = min(len(a), len(b)) // TOKEN_BLOCK
    k = 0
    while k < full and k < len(chain_a) and k < len(chain_b) and chain_a[k] == chain_b[k]:
        k += 1
    start = k * TOKEN_BLOCK
    end = min(len(a), len(b), start + TOKEN_BLOCK)
    return start + common_prefix_len(a[start:end], b[start:end])
