"""Where a workspace's state is: the one decision behind restores (a lease) and forks."""

from __future__ import annotations

from enum import Enum

from ..kvsession import KVSession
from .held import HeldState
from .workspace import Workspace

__all__ = ["Source", "on_its_way_or_on_disk", "state_source"]


class Source(Enum):
    LIVE = "live"  # the workspace's own live context (a fork copies it)
    PENDING = "pending"  # an evicted state waiting for (or failed) its write
    KEPT = "kept"  # a written state still in memory
    DISK = "disk"  # the snapshot file (read and verified)
    COLD = "cold"  # nowhere: the session starts empty


def state_source(ws: Workspace, into: KVSession, pending: HeldState | None, kept: HeldState | None) -> Source:
    """Where ws's state comes from to fill the empty session `into`, best first. For a restore `into` is
    ws's own new session; for a fork it is the target's. kept must be usable (KeptStates.usable/take)."""
    if ws.session is not None and ws.session is not into:
        return Source.LIVE
    if pending is not None:
        return Source.PENDING
    if kept is not None:
        return Source.KEPT
    if ws.snapshot is not None:
        return Source.DISK
    return Source.COLD


def on_its_way_or_on_disk(ws: Workspace, pending: HeldState | None) -> bool:
    """Whether ws's live state (as last remembered) is already written, or queued to be written."""
    if pending is not None and not pending.error:
        return ws.signature == pending.signature
    return ws.snapshot is not None and ws.signature == ws.snapshot_signature
