"""SessionPool: many workspaces over one loaded model, a memory budget, and LRU eviction to disk snapshots.

Accounting (pool.stats().live_bytes): every live session's kv_bytes() (its full n_ctx KV allocation), the
pool's small tokenizer session, and every state buffer in flight. Exporting or importing a state of S bytes
briefly holds 2S (llama.cpp copies through a ctypes buffer), so a transfer reserves 2S. Admission keeps room
for one full-context transfer (`transfer_headroom`), so an eviction can always proceed; see budget_for().
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import Config
from .errors import (
    InvalidInputError,
    SessionBusyError,
    SessionClosedError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
)
from .kvsession import KVSession
from .session import SessionState, default_model_path, open_session
from .snapshot import TOKEN_BLOCK, SnapshotIdentity, token_chain
from .store import SnapshotEntry, SnapshotStore

__all__ = ["MissRecord", "PoolStats", "SessionPool", "WorkspaceInfo"]

_ANCHOR_CTX = 256  # the tokenizer session: keeps the model loaded and tokenizes for routing
_STATE_SLACK_PER_TOKEN = 64  # token ids, prefix text and cell metadata, per token (generous)
_STATE_SLACK = 1 << 20
_RECENT_MISSES = 32
_RECOVERY_DETAIL = "snapshot refused at startup: its file was missing, truncated or had a damaged header"
_NEW = ("new", "", "no snapshot")


@dataclass(frozen=True)
class WorkspaceInfo:
    """One workspace: live (KV in memory) or evicted (only its snapshot on disk)."""

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
    live_bytes: int  # accounted now: live KV, the tokenizer session, state buffers in flight
    peak_live_bytes: int
    memory_budget_bytes: int | None
    snapshot_bytes: int
    disk_budget_bytes: int | None
    hits: int  # leases of a live workspace
    restores: int  # leases that restored an evicted workspace from its snapshot
    misses: int  # leases that started cold
    miss_reasons: Mapping[str, int]
    evictions: int
    snapshots_written: int
    snapshot_failures: int
    collected: int  # snapshots removed by the disk budget
    forks: int
    recent_misses: tuple[MissRecord, ...]


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
    signature: tuple[object, ...] = ()  # of the live state at the last release
    snapshot: SnapshotEntry | None = None
    snapshot_signature: tuple[object, ...] | None = None  # of the state the snapshot holds
    tick: int = 0  # LRU order
    last_used: float = 0.0
    dropped: bool = False

    @property
    def clean(self) -> bool:
        return self.snapshot is not None and self.signature == self.snapshot_signature


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
    ) -> None:
        self.model_path = str(model_path or default_model_path())
        self.config = config or Config()
        self.memory_budget_bytes = memory_budget_bytes
        self._cv = threading.Condition(threading.Lock())
        self._ws: dict[str, _Workspace] = {}
        self._closed = False
        self._closing = False  # close() has begun: no new leases
        self._clock = 0
        self._kv_live = 0
        self._buffers = 0
        self._peak = 0
        self._counts: Counter[str] = Counter()
        self._miss_reasons: Counter[str] = Counter()
        self._recent: deque[MissRecord] = deque(maxlen=_RECENT_MISSES)
        self._lost: dict[str, tuple[str, str, str]] = {}  # workspace id -> (reason, error, detail) of a lost snapshot
        self._store = SnapshotStore(store_dir, disk_budget_bytes=disk_budget_bytes)
        try:
            self._anchor = self._open(self.config.replace(num_ctx=_ANCHOR_CTX))
        except BaseException:
            self._store.close()
            raise
        self._anchor_bytes = self._anchor.kv_bytes()
        self._per_token = self._anchor.kv_bytes() / self._anchor.num_ctx
        self._n_ctx = _padded_ctx(self.config.num_ctx)
        self._kv_per_session = int(self._per_token * self._n_ctx)
        self._identity = _with_n_ctx(SnapshotIdentity.of(self._anchor), self._n_ctx)
        self._check_budget()
        for entry in self._store.entries():
            self._ws[entry.workspace_id] = self._evicted_workspace(entry)
        for workspace_id in self._store.recovery.rows_removed:
            self._lost[workspace_id] = ("corrupt", SnapshotCorruptError.__name__, _RECOVERY_DETAIL)

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
        """Bytes kept free for one full-context export or import (2x the state: ctypes copies it)."""
        return 2 * self.state_bytes_estimate(self._n_ctx)

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
        _check_id(workspace_id)
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
            if ws.session is None and ws.snapshot is None and not ws.dropped:
                ws.dropped = True  # nothing resident and nothing on disk: the workspace is gone
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

    def _activate(self, ws: _Workspace) -> KVSession:
        """The live session of a leased workspace: a hit, a restore, or a cold start."""
        if ws.session is not None:
            if not ws.session.explain_context().fatal:
                self._count("hits")
                return ws.session
            self._discard_session(ws)
        self._admit(ws)
        session = ws.session
        assert session is not None
        if ws.snapshot is None:
            self._miss(ws, session, *self._lost.pop(ws.id, _NEW))
        else:
            self._restore(ws, session)
        return session

    # -- admission and eviction -------------------------------------------------------------------
    def _admit(self, ws: _Workspace) -> None:
        """Reserve a session's KV (evicting others as needed), then open the session."""
        self._make_room(ws, self._kv_per_session, kind="session")
        try:
            session = self._open(self.config)
        except BaseException:
            with self._cv:
                self._kv_live -= self._kv_per_session
                self._cv.notify_all()
            raise
        with self._cv:
            actual = session.kv_bytes()
            self._kv_live += actual - self._kv_per_session
            self._note_peak()
            ws.session, ws.kv_bytes = session, actual
            if actual != self._kv_per_session or session.num_ctx != self._n_ctx:
                self._kv_per_session, self._n_ctx = actual, session.num_ctx
                self._identity = SnapshotIdentity.of(session)

    def _make_room(self, me: _Workspace, nbytes: int, kind: str) -> None:
        """Wait or evict until nbytes fit, then account them (kind: session KV or a transfer buffer)."""
        while True:
            with self._cv:
                self._check_open()
                if self._fits(nbytes, kind):
                    if kind == "session":
                        self._kv_live += nbytes
                    else:
                        self._buffers += nbytes
                    self._note_peak()
                    return
                victim = None if (kind == "buffer" and self._buffers) else self._take_victim(me)
                if victim is None:
                    self._wait_for_room(me, nbytes, kind)
                    continue
            try:
                self._evict(victim)
            finally:
                self._unlease(victim)

    def _fits(self, nbytes: int, kind: str) -> bool:
        budget = self.memory_budget_bytes
        if budget is None:
            return True
        base = self._anchor_bytes + self._kv_live
        if kind == "session":
            return base + nbytes + max(self.transfer_headroom, self._buffers) <= budget
        return base + self._buffers + nbytes <= budget

    def _take_victim(self, me: _Workspace) -> _Workspace | None:
        """The least recently used live, unleased workspace, leased for eviction (under the pool lock)."""
        live = [w for w in self._ws.values() if w.session is not None and w is not me and w.holder is None]
        for ws in sorted(live, key=lambda w: (w.waiters > 0, w.tick)):
            if ws.lease.acquire(blocking=False):
                ws.holder = threading.get_ident()
                return ws
        return None

    def _wait_for_room(self, me: _Workspace, nbytes: int, kind: str) -> None:
        mine = threading.get_ident()
        others = [w for w in self._ws.values() if w is not me and (w.session is not None or w.holder is not None)]
        if not self._buffers and others and all(w.holder == mine for w in others):
            raise SessionBusyError(
                f"memory budget is full of workspaces this thread holds; cannot make room for {me.id!r}"
            )
        if not self._buffers and not others:
            raise SnapshotError(f"{kind} of {nbytes} B for {me.id!r} does not fit the memory budget")
        self._cv.wait(timeout=1.0)

    def _unlease(self, ws: _Workspace) -> None:
        with self._cv:
            if ws.session is None and ws.snapshot is None and not ws.dropped:
                ws.dropped = True
                self._ws.pop(ws.id, None)
            ws.holder = None
            ws.lease.release()
            self._cv.notify_all()

    def _evict(self, ws: _Workspace) -> None:
        """Snapshot the workspace (unless its snapshot is current) and free its session. Holds its lease."""
        session = ws.session
        assert session is not None
        if not ws.clean and session.resident_tokens() and not session.explain_context().fatal:
            self._snapshot(ws, session)
        self._discard_session(ws)
        self._count("evictions")

    def _discard_session(self, ws: _Workspace) -> None:
        session, ws.session = ws.session, None
        if session is None:
            return
        session.close()
        with self._cv:
            self._kv_live -= ws.kv_bytes
            ws.kv_bytes = 0
            self._cv.notify_all()

    # -- snapshots ---------------------------------------------------------------------------------
    def _snapshot(self, ws: _Workspace, session: KVSession) -> None:
        """Export the live state and write it as the workspace's snapshot (the caller holds the lease)."""
        self._remember_resident(ws, session)
        with self._transfer(ws, 2 * self.state_bytes_estimate(len(ws.tokens))) as held:
            state = session.export_state()
            size = _state_size(state)
            self._resize(held, 2 * size)  # what the export held at its peak
            self._resize(held, size)
            self._write(ws, state, SnapshotIdentity.of(session))
            del state

    def _write(self, ws: _Workspace, state: SessionState, identity: SnapshotIdentity) -> None:
        with self._cv:
            protect = {w.id for w in self._ws.values() if w.holder is not None}
        try:
            entry, collected = self._store.put(ws.id, state, identity, protect)
        except SnapshotError:
            self._count("snapshot_failures")
            raise
        ws.snapshot = entry
        ws.snapshot_signature = (state.tokens, state.prefix_len, state.generated)
        self._count("snapshots_written")
        self._forget_collected(collected)

    def _forget_collected(self, collected: Sequence[str]) -> None:
        with self._cv:
            for workspace_id in collected:
                self._counts["collected"] += 1
                ws = self._ws.get(workspace_id)
                if ws is None:
                    continue
                ws.snapshot, ws.snapshot_signature = None, None
                if ws.session is None and ws.holder is None:
                    ws.dropped = True
                    self._ws.pop(workspace_id, None)
                    self._lost[workspace_id] = ("collected", "", "snapshot was removed by the disk budget")

    def _restore(self, ws: _Workspace, session: KVSession) -> None:
        """Load the workspace's snapshot into its fresh session, or start it cold with the reason."""
        entry = ws.snapshot
        assert entry is not None
        try:
            with self._transfer(ws, 2 * entry.size_bytes):
                _, state = self._store.load(ws.id, SnapshotIdentity.of(session))
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

    @contextmanager
    def _transfer(self, ws: _Workspace, nbytes: int) -> Iterator[list[int]]:
        """Account a state buffer of nbytes while it exists; the body may lower held[0] to the real size."""
        self._make_room(ws, nbytes, kind="buffer")
        held = [nbytes]
        try:
            yield held
        finally:
            with self._cv:
                self._buffers -= held[0]
                self._cv.notify_all()

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
        if target.session is not None or target.snapshot is not None:
            raise InvalidInputError(f"workspace {target.id!r} already exists")
        if self._only_source_can_make_room(source):
            self._evict(source)  # e.g. a budget of one live session: fork through the snapshot
        self._admit(target)
        session = target.session
        assert session is not None
        try:
            with self._transfer(target, 2 * self._fork_state_bytes(source)):
                state = self._fork_state(source, session)
                if state is not None:
                    session.import_state(state)
                del state
        except BaseException:
            self._discard_session(target)
            raise
        self._remember_resident(target, session)
        self._count("forks")

    def _only_source_can_make_room(self, source: _Workspace) -> bool:
        with self._cv:
            if source.session is None or self._fits(self._kv_per_session, "session"):
                return False
            return not any(w.session is not None and w.holder is None for w in self._ws.values())

    def _fork_state_bytes(self, source: _Workspace) -> int:
        if source.session is not None:
            return self.state_bytes_estimate(len(source.session.resident_tokens()))
        return source.snapshot.size_bytes if source.snapshot is not None else 0

    def _fork_state(self, source: _Workspace, target: KVSession) -> SessionState | None:
        if source.session is not None:
            return source.session.export_state() if source.session.resident_tokens() else None
        if source.snapshot is None:
            return None
        return self._store.load(source.id, SnapshotIdentity.of(target))[1]

    def drop(self, workspace_id: str) -> None:
        """Forget a workspace: its live session and its snapshot."""
        ws = self._lease(workspace_id, create=False)
        try:
            self._discard_session(ws)
            self._store.remove(workspace_id)
            ws.snapshot = None
        finally:
            with self._cv:
                ws.dropped = True
                self._ws.pop(workspace_id, None)
                ws.holder = None
                ws.lease.release()
                self._cv.notify_all()

    def checkpoint(self, workspace_id: str) -> None:
        """Write the workspace's snapshot now, without evicting it (no-op if the snapshot is current)."""
        ws = self._lease(workspace_id, create=False)
        try:
            session = ws.session
            if session is not None and session.resident_tokens():
                self._remember_resident(ws, session)
                if not ws.clean:
                    self._snapshot(ws, session)
        finally:
            self._release(ws)

    def workspaces(self) -> list[WorkspaceInfo]:
        with self._cv:
            items = list(self._ws.values())
        return [
            WorkspaceInfo(
                id=w.id,
                live=w.session is not None,
                resident_tokens=len(w.tokens) if w.session is not None or w.snapshot is None else w.snapshot.n_tokens,
                kv_bytes=w.kv_bytes,
                snapshot_bytes=w.snapshot.size_bytes if w.snapshot is not None else 0,
                last_used=w.last_used,
            )
            for w in sorted(items, key=lambda w: -w.tick)
        ]

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]:
        """The workspace (live, or on disk under this pool's identity) whose reusable resident tokens share
        the longest prefix with tokens, and that length; (None, 0) below min_tokens."""
        query = tuple(tokens)
        query_chain = token_chain(query)
        best: tuple[int, bool, int, str] | None = None
        with self._cv:
            candidates = [(w, w.session is not None) for w in self._ws.values()]
        for ws, live in candidates:
            mine, chain, stable = self._routing_view(ws, live)
            n = min(_shared_prefix(query, query_chain, mine, chain), stable)
            key = (n, live, ws.tick, ws.id)
            if n >= min_tokens and (best is None or key[:3] > best[:3]):
                best = key
        return (best[3], best[0]) if best is not None else (None, 0)

    def _routing_view(self, ws: _Workspace, live: bool) -> tuple[tuple[int, ...], tuple[str, ...], int]:
        entry = ws.snapshot
        if live or entry is None:
            return ws.tokens, ws.chain, ws.stable
        if entry.identity_key != self._identity.key():
            return (), (), 0
        return entry.tokens, entry.chain, entry.stable_len

    def tokenize(self, text: str) -> list[int]:
        """Token ids of text with the pool's model, as ensure_prefix would make them (for routing)."""
        self._check_open(leasing=True)
        return self._anchor.tokenize(text)

    def stats(self) -> PoolStats:
        with self._cv:
            live = sum(1 for w in self._ws.values() if w.session is not None)
            evicted = sum(1 for w in self._ws.values() if w.session is None and w.snapshot is not None)
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
                misses=c["misses"],
                miss_reasons=dict(self._miss_reasons),
                evictions=c["evictions"],
                snapshots_written=c["snapshots_written"],
                snapshot_failures=c["snapshot_failures"],
                collected=c["collected"],
                forks=c["forks"],
                recent_misses=tuple(self._recent),
            )

    def close(self) -> None:
        """Snapshot every live workspace whose snapshot is stale, then free everything. Idempotent."""
        with self._cv:
            if self._closed or self._closing:
                return
            self._closing = True
            items = list(self._ws.values())
        try:
            for ws in items:
                self._close_workspace(ws)
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            anchor = getattr(self, "_anchor", None)
            if anchor is not None:
                anchor.close()
            self._store.close()

    def _close_workspace(self, ws: _Workspace) -> None:
        with ws.lease:
            if ws.dropped or ws.session is None:
                return
            ws.holder = threading.get_ident()
            try:
                session = ws.session
                if session.resident_tokens() and not session.explain_context().fatal:
                    self._remember_resident(ws, session)
                    if not ws.clean:
                        self._snapshot(ws, session)
            finally:
                self._discard_session(ws)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small helpers -------------------------------------------------------------------------------
    def _open(self, config: Config) -> KVSession:
        session = open_session(self.model_path, config)
        if not isinstance(session, KVSession):
            session.close()
            raise InvalidInputError("the registered session backend does not produce KVSession objects")
        return session

    def _evicted_workspace(self, entry: SnapshotEntry) -> _Workspace:
        stable = min(entry.stable_len, entry.n_tokens)
        return _Workspace(entry.workspace_id, snapshot=entry, tokens=(), stable=stable, last_used=entry.last_used)

    def _check_open(self, leasing: bool = False) -> None:
        if self._closed or (leasing and self._closing):
            raise SessionClosedError("the session pool is closed")

    def _count(self, name: str) -> None:
        with self._cv:
            self._counts[name] += 1

    def _live_bytes(self) -> int:
        return self._anchor_bytes + self._kv_live + self._buffers

    def _note_peak(self) -> None:
        self._peak = max(self._peak, self._live_bytes())


def _check_id(workspace_id: str) -> None:
    if not isinstance(workspace_id, str) or not workspace_id or len(workspace_id) > 256:
        raise InvalidInputError("a workspace id is a non-empty string of at most 256 characters")


def _padded_ctx(num_ctx: int) -> int:
    return -(-num_ctx // 256) * 256  # llama.cpp pads n_ctx to a multiple of 256


def _with_n_ctx(identity: SnapshotIdentity, n_ctx: int) -> SnapshotIdentity:
    return replace(identity, kv_config={**identity.kv_config, "n_ctx": n_ctx})


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
    n = start
    while n < end and a[n] == b[n]:
        n += 1
    return n
