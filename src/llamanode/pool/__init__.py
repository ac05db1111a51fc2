"""SessionPool: many workspaces over one loaded model, a memory budget, and eviction to disk snapshots.

One job per module, all bookkeeping under one re-entrant lock (the pool's condition):

    session_pool  SessionPool: the public API; composes the parts below
    workspace     Workspace records and their exclusive leases; open / closing / closed
    ledger        the memory ledger: live KV and state buffers against the budget, as reservations
    room          admission and eviction (the evicted context is kept as the spare for the next one)
    spare         with spare_ahead: a context opened ahead of need while no lease is held
    keeping       what goes first from memory and disk: forks on probation, then least recently used
    writer        the background snapshot writer; reports back through a WriterHost
    records       the writer's host: snapshot entries, kept copies, why a workspace starts cold
    kept          written states kept in memory for a quick switch back
    source        state_source(): where a workspace's state comes from (live, pending, kept, disk, cold)
    restore       restore (a lease), copy (a fork), write now (checkpoint, close)
    forking       fork (a named source) and fork_nearest (the source sharing a new prompt's longest prefix)
    routing       longest_prefix over live and stored workspaces
    stats         PoolStats, WorkspaceInfo, MissRecord and the counters behind them

Accounting (pool.stats().live_bytes): every live session's kv_bytes() (its full n_ctx KV allocation), the
spare context's, and every state buffer that exists: exports and restores in progress and evicted states
waiting for the background writer. A state of S bytes holds S: the backend exports straight into it and
imports straight from it. Admission keeps `transfer_headroom` free: two evictions on their way to disk plus
one restore, so a switch does not wait for the writer. See budget_for().
"""

from .session_pool import SessionPool
from .stats import MissRecord, PoolStats, WorkspaceInfo
from .writer import WRITE_DEFER_S

__all__ = ["WRITE_DEFER_S", "MissRecord", "PoolStats", "SessionPool", "WorkspaceInfo"]
