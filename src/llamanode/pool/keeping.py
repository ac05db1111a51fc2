"""What the pool keeps longest: one ranking for evicting live workspaces, dropping kept states and
collecting snapshots under the disk budget (by the workspace's use, not the snapshot's age: the snapshot
of a live workspace that is used all the time goes last).

A fork starts on probation: an agent opens a new session for every task, each forked from the workspace
it keeps coming back to, and most are used once. Forks on probation go first (least recently used first),
then every other workspace by plain LRU. A fork leaves probation once it has been used PROBATION_USES times
(leases, and forks taken from it), so a fork that became a long conversation is kept like any other.
A fork on probation that is still leased goes first too: room waits for it a moment (room.py), and a fork
of it evicts it rather than another workspace (Room.source_goes_first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["BUSY_FORK_WAIT_S", "PROBATION_USES", "keep_rank", "on_probation"]

PROBATION_USES = 3
# An admission waits this long at most for a fork on probation that is still leased (a task's turn ending:
# its answer prefilled for a next turn) before it evicts a workspace worth keeping instead.
BUSY_FORK_WAIT_S = 2.0


def on_probation(ws: Workspace) -> bool:
    """A fork used fewer than PROBATION_USES times: short-lived so far."""
    return ws.origin is not None and ws.uses < PROBATION_USES


def keep_rank(ws: Workspace) -> tuple[bool, int, float]:
    """Lower goes first: forks on probation before the rest, least recently used first within each (the
    pool's clock, then the wall clock: workspaces found on disk at start-up share tick 0)."""
    return (not on_probation(ws), ws.tick, ws.last_used)
