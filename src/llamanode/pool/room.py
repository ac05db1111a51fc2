"""Room in the memory budget: admitting sessions, reserving state buffers, and evicting to make room.

An evicted workspace's state goes to the writer and its context stays as the spare, which the next
admitted workspace reuses (KVSession.reset) instead of allocating a new one; with spare_ahead the pool
also opens one ahead of need (prepare_spare, pool/spare.py). Kept states (already on
disk) are dropped before anything is evicted; memory that will free itself (a transfer, a write,
another thread's lease) is waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, overload

from ..errors import MemoryBudgetError, SnapshotError
from ..kvsession import KVSession
from .held import HeldState
from .keeping import BUSY_FORK_WAIT_S, keep_rank, on_probation
from .kept import KeptStates
from .ledger import Kind, MemoryLedger, Reservation, Sizes, state_size
from .records import SnapshotRecords
from .source import on_its_way_or_on_disk
from .stats import StatsRecorder
from .workspace import Workspace, Workspaces
from .writer import SnapshotWriter

__all__ = ["Room"]


class Room:
    """Admission and LRU eviction over the ledger. Methods take the pool lock themselves."""

    def __init__(
        self,
        cv: threading.Condition,
        ledger: MemoryLedger,
        workspaces: Workspaces,
        kept: KeptStates,
        writer: SnapshotWriter,
        records: SnapshotRecords,
        stats: StatsRecorder,
        open_session: Callable[[], KVSession],
    ) -> None:
        self._cv = cv
        self._ledger = ledger
        self._workspaces = workspaces
        self._kept = kept
        self._writer = writer
        self._records = records
        self._stats = stats
        self._open = open_session
        self._spare: KVSession | None = None  # an evicted context, or one opened ahead: ready for the next one
        self._spare_opening = False  # prepare_spare is opening one (accounted already): admissions wait for it

    def admit(self, ws: Workspace) -> KVSession:
        """An empty session for ws: the spare context, reset, or a new one within the budget."""
        sizes = self._ledger.sizes
        spare = self._make_room(ws, sizes.session_bytes, "session")
        if spare is not None:
            try:
                spare.reset()
            except BaseException:
                self._close_spare(spare)
                raise
            session = spare
        else:
            session = self._open_accounted(sizes.session_bytes)
        with self._cv:
            actual = session.kv_bytes()
            ws.session, ws.kv_bytes = session, actual
            if actual != sizes.session_bytes or session.num_ctx != sizes.n_ctx:  # the backend guessed wrong
                self._ledger.sizes = Sizes(sizes.per_token, session.num_ctx, actual)
        return session

    def reserve(self, ws: Workspace, nbytes: int) -> Reservation:
        """A state buffer of nbytes for ws's transfer (waiting or evicting for room); release() it."""
        return self._make_room(ws, nbytes, "buffer")

    def evict(self, ws: Workspace) -> None:
        """Hand ws's live state to the writer (unless it is written or queued already) and keep its context
        as the spare. A prewarm is settled first (settle_prewarm); an unfinished prefill is no state: ws keeps its last
        written or queued one, if any. The caller holds ws's lease."""
        session = ws.session
        assert session is not None
        session.settle_prewarm("eviction")
        report = session.explain_context()
        healthy, unfinished = not report.fatal, report.manifest is None and report.resident_tokens > 0
        if unfinished:
            ws.forget_live()
            with self._cv:
                if ws.snapshot is None and ws.id not in self._writer:
                    self._records.unfinished(ws.id)
        else:
            ws.remember(session)
        if healthy and not unfinished and report.resident_tokens and not self._saved(ws):
            self._export_for_writer(ws, session)
        with self._cv:
            ws.session, kv = None, ws.kv_bytes
            ws.kv_bytes = 0
            keep = healthy and self._spare is None and not self._workspaces.closing
            if keep:
                self._spare = session
            else:
                self._ledger.free_session(kv)
            self._stats.count("evictions")
            self._cv.notify_all()
        if not keep:
            session.close()

    def _saved(self, ws: Workspace) -> bool:
        return on_its_way_or_on_disk(ws, self._writer.pending(ws.id))

    def discard(self, ws: Workspace) -> None:
        """Close ws's live session, if any, and free its KV."""
        with self._cv:
            session, ws.session = ws.session, None
            kv, ws.kv_bytes = ws.kv_bytes, 0
        if session is None:
            return
        session.close()
        self._ledger.free_session(kv)

    def source_goes_first(self, source: Workspace) -> bool:
        """A fork's target needs an eviction, and its live source is the one to go: there is no other live
        workspace (e.g. a budget of one), or the source ranks lowest of all of them, leased or not (keep_rank:
        a fork on probation, forked again). Of several forks needing room at once, the one whose source ranks
        lowest evicts it, so one always goes on."""
        with self._cv:
            sizes = self._ledger.sizes
            if source.session is None or self._spare is not None or self._ledger.fits(sizes.session_bytes, "session"):
                return False
            lowest = self._workspaces.lowest_live(besides=source)
            return lowest is None or keep_rank(source) < keep_rank(lowest)

    def prepare_spare(self) -> bool:
        """Open a spare context ahead of need, if there is none and the budget fits one more session
        besides the live ones and their transfer headroom; True if one was made (pool/spare.py)."""
        nbytes = self._ledger.sizes.session_bytes
        with self._cv:
            if self._spare is not None or self._workspaces.closing or not self._ledger.fits(nbytes, "session"):
                return False
            self._ledger.account(nbytes, "session")
            self._spare_opening = True
        session: KVSession | None = None
        try:
            session = self._open_accounted(nbytes)
        finally:
            with self._cv:
                self._spare_opening = False
                self._cv.notify_all()  # admissions waiting for it take it, or open their own
                kept = session is not None and self._spare is None and not self._workspaces.closing
                if kept:
                    self._spare = session
                    self._stats.count("spares_opened")
        if kept:
            return True
        assert session is not None
        self._close_spare(session)
        return False

    def _open_accounted(self, nbytes: int) -> KVSession:
        """Open a context whose nbytes the ledger holds already, corrected to its real size (freed if it fails)."""
        try:
            session = self._open()
        except BaseException:
            self._ledger.free_session(nbytes)
            raise
        with self._cv:
            self._ledger.correct_session(nbytes, session.kv_bytes())
        return session

    def take_spare(self) -> KVSession | None:
        with self._cv:
            spare, self._spare = self._spare, None
            return spare

    # -- making room ------------------------------------------------------------------------------
    @overload
    def _make_room(self, me: Workspace, nbytes: int, kind: Literal["session"]) -> KVSession | None: ...

    @overload
    def _make_room(self, me: Workspace, nbytes: int, kind: Literal["buffer"]) -> Reservation: ...

    def _make_room(self, me: Workspace, nbytes: int, kind: Kind) -> KVSession | Reservation | None:
        """Wait or evict until nbytes fit, then account them: a buffer comes back as a reservation; a
        session as None (accounted), or as the spare context to reuse (accounted already)."""
        began = time.monotonic()
        while True:
            spare: KVSession | None = None
            with self._cv:
                self._workspaces.check_open()
                if kind == "session" and self._spare is not None:
                    spare, self._spare = self._spare, None
                    return spare
                if kind == "session" and self._spare_opening:  # halfway there: opening another would compete
                    self._cv.wait(timeout=1.0)
                    continue
                while not self._ledger.fits(nbytes, kind) and self._kept_in_the_way(kind) and self._drop_one_kept():
                    pass  # kept states are on disk already: dropping them is free
                if self._ledger.fits(nbytes, kind):
                    return self._ledger.account(nbytes, kind)
                if self._spare is not None:  # a buffer needs the room a spare context takes
                    spare, self._spare = self._spare, None
                    victim = None
                else:
                    victim = None if (kind == "buffer" and self._in_flight()) else self._take_victim(me, kind, began)
                    if victim is None:
                        self._wait_for_room(me, nbytes, kind)
                        continue
            if spare is not None:
                self._close_spare(spare)
                continue
            assert victim is not None
            try:
                self.evict(victim)
            finally:
                with self._cv:
                    self._workspaces.unlease(victim, pending=victim.id in self._writer)

    def _take_victim(self, me: Workspace, kind: Kind, began: float) -> Workspace | None:
        """The workspace to evict (leased for it), or None to wait: a session's admission waits up to
        BUSY_FORK_WAIT_S for a busy fork on probation that ranks below every idle workspace (a one-shot task
        finishing its turn) rather than evict one worth keeping."""
        if kind == "session" and time.monotonic() - began < BUSY_FORK_WAIT_S:
            lowest = self._workspaces.lowest_live(besides=me)
            if lowest is not None and lowest.holder not in (None, threading.get_ident()) and on_probation(lowest):
                return None
        return self._workspaces.take_victim(me)

    def _kept_in_the_way(self, kind: Kind) -> bool:
        """Whether dropping kept states can make room: always for a buffer; for a session only while the
        buffers exceed the headroom a session admission keeps free anyway."""
        return bool(self._kept) and (kind == "buffer" or self._ledger.buffers > self._ledger.sizes.headroom)

    def _drop_one_kept(self) -> bool:
        def unleased(workspace_id: str) -> bool:
            ws = self._workspaces.get(workspace_id)
            return ws is None or ws.holder is None

        def rank(workspace_id: str) -> tuple[bool, int, float]:
            ws = self._workspaces.get(workspace_id)
            return keep_rank(ws) if ws is not None else (False, -1, 0.0)

        return self._kept.drop_one(unleased, rank)

    def _in_flight(self) -> int:
        """Buffer bytes that will free themselves: transfers and writes that have not failed."""
        return self._ledger.buffers - self._writer.failed_bytes() - self._kept.nbytes()

    def _wait_for_room(self, me: Workspace, nbytes: int, kind: Kind) -> None:
        """Wait for room that will free itself (a transfer, a write, another thread's lease), or raise."""
        mine = threading.get_ident()
        if self._in_flight() or self._workspaces.live_held_by_others(mine):
            began = time.perf_counter()
            with self._writer.urgently():
                self._cv.wait(timeout=1.0)
            self._stats.add_seconds("wait", time.perf_counter() - began)
            return
        failed = self._writer.failures()
        if failed:
            raise SnapshotError(
                f"no room for {me.id!r}: {len(failed)} evicted state(s) are held in memory because snapshot"
                f" writes failed: {failed[0]}"
            )
        if self._workspaces.live_held_by(mine, besides=me):
            raise MemoryBudgetError(
                f"memory budget is full of workspaces this thread holds; cannot make room for {me.id!r}"
            )
        raise SnapshotError(f"{kind} of {nbytes} B for {me.id!r} does not fit the memory budget")

    def _export_for_writer(self, ws: Workspace, session: KVSession) -> None:
        reservation = self.reserve(ws, self._ledger.sizes.state_estimate(len(ws.tokens)))
        try:
            with self._stats.timed("export"):
                state = session.export_state()
        except BaseException:
            reservation.release()
            raise
        reservation.resize(state_size(state))
        assert ws.signature is not None
        with self._cv:
            self._kept.drop(ws.id)  # a newer state replaces the kept copy
            self._writer.enqueue(ws.id, HeldState(state, session.state_identity(), reservation, ws.signature))

    def _close_spare(self, spare: KVSession) -> None:
        kv = spare.kv_bytes()
        spare.close()
        self._ledger.free_session(kv)
