"""Moving states into and out of sessions: restore on a lease, copy on a fork, write on a checkpoint.

Restore and fork ask state_source() where the state is and take it from there: a live context (fork),
a state still waiting for its write, a written state kept in memory, the verified snapshot file; a
workspace with none of these starts cold, with the reason recorded.
"""

from __future__ import annotations

import threading

from ..errors import SnapshotCorruptError, SnapshotError, SnapshotMismatchError
from ..kvsession import KVSession
from ..store import SnapshotStore
from .held import HeldState
from .kept import KeptStates
from .ledger import MemoryLedger, state_size
from .records import SnapshotRecords
from .room import Room
from .source import Source, on_its_way_or_on_disk, state_source
from .stats import StatsRecorder
from .workspace import Workspace
from .writer import SnapshotWriter

__all__ = ["StateMover"]


class StateMover:
    """Fills a leased workspace's empty session from wherever its state is, and writes a live state to
    disk synchronously. Methods take the pool lock themselves."""

    def __init__(
        self,
        cv: threading.Condition,
        room: Room,
        ledger: MemoryLedger,
        writer: SnapshotWriter,
        kept: KeptStates,
        records: SnapshotRecords,
        store: SnapshotStore,
        stats: StatsRecorder,
    ) -> None:
        self._cv = cv
        self._room = room
        self._ledger = ledger
        self._writer = writer
        self._kept = kept
        self._records = records
        self._store = store
        self._stats = stats

    # -- a lease ----------------------------------------------------------------------------------
    def restore(self, ws: Workspace, session: KVSession) -> None:
        """Fill ws's new, empty session with ws's evicted state, or start it cold with the reason."""
        with self._cv:
            pending = self._writer.pending(ws.id)
            kept = self._kept.take(ws)  # the lease makes ws live: the cache stops keeping it either way
            source = state_source(ws, session, pending, kept)
        if kept is not None and source is not Source.KEPT:
            kept.reservation.release()  # a kept copy and a pending state never coexist; free it all the same
        if source is Source.PENDING:
            assert pending is not None
            self._from_memory(ws, session, pending)
        elif source is Source.KEPT:
            assert kept is not None
            try:
                self._from_memory(ws, session, kept)  # no read, no verify: these bytes never left this process
            finally:
                kept.reservation.release()
        elif source is Source.DISK:
            self._from_disk(ws, session)
        else:
            self._cold(ws, session, *self._records.why_cold(ws.id))

    def _from_memory(self, ws: Workspace, session: KVSession, held: HeldState) -> None:
        with self._stats.timed("import"):
            session.import_state(held.state)  # read in place: no buffer beyond the one already accounted
        self._writer.cancel(ws.id, held)  # a pending write of this state is not needed any more
        ws.remember(session)
        self._stats.count("restores", "restores_from_memory")

    def _from_disk(self, ws: Workspace, session: KVSession) -> None:
        entry = ws.snapshot
        assert entry is not None
        reservation = self._room.reserve(ws, entry.size_bytes)
        try:
            with self._stats.timed("read"):
                _, state = self._store.load(ws.id, session.state_identity())
            with self._stats.timed("import"):
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
            ws.remember(session)
            ws.snapshot_signature = ws.signature
            self._stats.count("restores")
        finally:
            reservation.release()

    def _refused(self, ws: Workspace, session: KVSession, reason: str, exc: Exception, removed: bool) -> None:
        if removed:
            ws.snapshot, ws.snapshot_signature = None, None
        self._cold(ws, session, reason, type(exc).__name__, f"snapshot refused: {exc}")

    def _cold(self, ws: Workspace, session: KVSession, reason: str, error: str, detail: str) -> None:
        if reason != "new":
            session.note_cold_start(detail)
        ws.remember(session)
        self._stats.miss(ws.id, reason, error, detail)

    # -- a fork -----------------------------------------------------------------------------------
    def copy(self, source: Workspace, session: KVSession, unfinished: bool = False) -> None:
        """Fill the fork target's empty session with source's state (source stays as it is). unfinished: a
        live source's unfinished prefill is copied as such (KVSession.export_state)."""
        with self._cv:
            pending, kept = self._writer.pending(source.id), self._kept.usable(source)
            where = state_source(source, session, pending, kept)
        if where is Source.LIVE:
            live = source.session
            assert live is not None
            if live.resident_tokens():
                estimate = self._ledger.sizes.state_estimate(len(live.resident_tokens()))
                reservation = self._room.reserve(source, estimate)
                try:
                    session.import_state(live.export_state(unfinished))
                finally:
                    reservation.release()
        elif where is Source.PENDING or where is Source.KEPT:
            held = pending if where is Source.PENDING else kept
            assert held is not None
            session.import_state(held.state)
        elif where is Source.DISK:
            assert source.snapshot is not None
            reservation = self._room.reserve(source, source.snapshot.size_bytes)
            try:
                session.import_state(self._store.load(source.id, session.state_identity())[1])
            finally:
                reservation.release()

    # -- a checkpoint -----------------------------------------------------------------------------
    def write_now(self, ws: Workspace, session: KVSession) -> None:
        """Write the live state synchronously (checkpoint, close); the caller holds the lease."""
        ws.remember(session)
        with self._cv:
            pending = self._writer.pending(ws.id)
        if pending is not None and not pending.error and pending.signature == ws.signature:
            self._writer.settle(ws.id, keep=True)  # this very state is being written: wait for it
            return
        self._writer.settle(ws.id, keep=False)
        if on_its_way_or_on_disk(ws, self._writer.pending(ws.id)):
            return
        reservation = self._room.reserve(ws, self._ledger.sizes.state_estimate(len(ws.tokens)))
        try:
            with self._stats.timed("export"):
                state = session.export_state()
            reservation.resize(state_size(state))
            try:
                order = self._records.keep_order()
                entry, collected = self._store.put(ws.id, state, session.state_identity(), self._in_use(), order)
            except SnapshotError:
                self._stats.count("snapshot_failures")
                raise
            del state
        finally:
            reservation.release()
        self._records.snapshot_taken(ws, entry)
        self._records.collected(collected)

    def _in_use(self) -> set[str]:
        with self._cv:
            return self._records.in_use() | self._writer.ids()
