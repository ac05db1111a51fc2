"""Written states kept in memory: a switch back imports one without reading and verifying its file."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .held import HeldState
from .workspace import Workspace

__all__ = ["KeptStates"]


class KeptStates:
    """States already on disk and still in memory, least recently kept first. Each holds its ledger
    reservation until it is dropped (room is needed) or taken (its workspace is live again).
    Guarded by the pool lock."""

    def __init__(self) -> None:
        self._states: OrderedDict[str, HeldState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def nbytes(self) -> int:
        return sum(held.nbytes for held in self._states.values())

    def keep(self, workspace_id: str, held: HeldState) -> None:
        self.drop(workspace_id)
        self._states[workspace_id] = held

    def usable(self, ws: Workspace) -> HeldState | None:
        """ws's kept state if it is exactly what ws's snapshot holds."""
        held = self._states.get(ws.id)
        if held is None or ws.snapshot is None or held.signature != ws.snapshot_signature:
            return None
        return held

    def take(self, ws: Workspace) -> HeldState | None:
        """ws's usable kept state, with its reservation, for the caller to import and release; the cache
        stops keeping any copy of ws either way (a stale one is dropped)."""
        held = self.usable(ws)
        if held is not None:
            del self._states[ws.id]
        else:
            self.drop(ws.id)
        return held

    def drop(self, workspace_id: str) -> None:
        held = self._states.pop(workspace_id, None)
        if held is not None:
            held.reservation.release()

    def drop_one(
        self, unleased: Callable[[str], bool], rank: Callable[[str], tuple[bool, int, float]] | None = None
    ) -> bool:
        """Drop the state of a workspace nobody leases that ranks lowest (by default: the least recently
        kept); False if there is none."""
        candidates = [workspace_id for workspace_id in self._states if unleased(workspace_id)]
        if not candidates:
            return False
        self.drop(min(candidates, key=rank) if rank is not None else candidates[0])
        return True

    def clear(self) -> None:
        for workspace_id in list(self._states):
            self.drop(workspace_id)
