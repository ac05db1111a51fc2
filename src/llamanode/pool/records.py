"""What the writer and the disk budget did to each workspace: its snapshot entry, its kept copy, and the
reason it will start cold when its snapshot is gone."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import SnapshotCorruptError
from ..store import SnapshotEntry
from .held import HeldState
from .keeping import keep_rank
from .kept import KeptStates
from .stats import StatsRecorder
from .workspace import Workspace, Workspaces
from .writer import SnapshotWriter, WriterHost

__all__ = ["SnapshotRecords"]

_RECOVERY_DETAIL = "snapshot refused at startup: its file was missing, truncated or had a damaged header"
_NEW = ("new", "", "no snapshot")
_UNFINISHED_DETAIL = "evicted while its prefix was unfinished (a cancelled prewarm or prefill): no state to save"


class SnapshotRecords(WriterHost):
    """The writer's host: answers its questions and records its reports. Guarded by the pool lock."""

    def __init__(
        self,
        cv: threading.Condition,
        workspaces: Workspaces,
        kept: KeptStates,
        stats: StatsRecorder,
        keep_written_states: bool,
    ) -> None:
        self._cv = cv
        self._workspaces = workspaces
        self._kept = kept
        self._stats = stats
        self._writer: SnapshotWriter | None = None
        # Keep an evicted state in memory after its write (accounted, dropped first when room is needed),
        # so a switch back to it imports from memory instead of reading and verifying the file.
        self.keep_written_states = keep_written_states
        self._lost: dict[str, tuple[str, str, str]] = {}  # id -> (reason, error, detail) of a lost snapshot

    def attach(self, writer: SnapshotWriter) -> None:
        """The writer this host serves (it is made with the host, so it comes second)."""
        self._writer = writer

    # -- the writer's questions ---------------------------------------------------------------------
    def turn_running(self) -> bool:
        return self._workspaces.any_leased()

    def in_use(self) -> set[str]:
        return self._workspaces.leased_ids()

    def keep_order(self) -> list[str]:
        with self._cv:
            return [w.id for w in sorted(self._workspaces, key=keep_rank)]

    # -- reports ------------------------------------------------------------------------------------
    def written(self, workspace_id: str, held: HeldState, entry: SnapshotEntry, current: bool) -> None:
        ws = self._workspaces.get(workspace_id)
        if ws is not None and not ws.dropped:
            ws.snapshot, ws.snapshot_signature = entry, held.signature
        evicted = ws is not None and ws.session is None and not ws.dropped
        if current and self.keep_written_states and evicted and not self._workspaces.closing:
            self._kept.keep(workspace_id, held)  # its bytes stay accounted
        else:
            held.reservation.release()

    def snapshot_taken(self, ws: Workspace, entry: SnapshotEntry) -> None:
        """ws's live state was written synchronously (checkpoint, close)."""
        with self._cv:
            ws.snapshot, ws.snapshot_signature = entry, ws.signature
            self._stats.count("snapshots_written")

    def collected(self, workspace_ids: Sequence[str]) -> None:
        with self._cv:
            for workspace_id in workspace_ids:
                self._stats.count("collected")
                ws = self._workspaces.get(workspace_id)
                if ws is None:
                    continue
                ws.snapshot, ws.snapshot_signature = None, None
                self._kept.drop(workspace_id)
                if ws.session is None and ws.holder is None and not self._pending(workspace_id):
                    self._workspaces.forget(ws)
                    self._lost[workspace_id] = ("collected", "", "snapshot was removed by the disk budget")

    def recovered(self, workspace_ids: Sequence[str]) -> None:
        """Snapshots the store removed at startup (damaged): their workspaces start cold, with the reason."""
        for workspace_id in workspace_ids:
            self._lost[workspace_id] = ("corrupt", SnapshotCorruptError.__name__, _RECOVERY_DETAIL)

    def unfinished(self, workspace_id: str) -> None:
        """The workspace was evicted holding only an unfinished prefill, and no earlier state was saved."""
        with self._cv:
            self._lost[workspace_id] = ("unfinished", "", _UNFINISHED_DETAIL)

    def why_cold(self, workspace_id: str) -> tuple[str, str, str]:
        """(reason, error, detail) for a workspace starting cold; forgets a lost snapshot's reason."""
        with self._cv:
            return self._lost.pop(workspace_id, _NEW)

    def _pending(self, workspace_id: str) -> bool:
        return self._writer is not None and workspace_id in self._writer
