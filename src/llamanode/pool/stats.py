"""What a pool reports: one row per workspace, the misses, and counters with the seconds behind them."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

__all__ = ["Gauges", "MissRecord", "PoolStats", "StatsRecorder", "WorkspaceInfo"]

_RECENT_MISSES = 32


@dataclass(frozen=True)
class WorkspaceInfo:
    """One workspace: live (KV in memory) or evicted (its snapshot on disk, or on its way there)."""

    id: str
    live: bool
    resident_tokens: int
    kv_bytes: int
    snapshot_bytes: int
    last_used: float
    forked_from: str | None = None  # the workspace it was forked from (while the pool runs)
    uses: int = 0  # leases for turns, plus forks taken from it


@dataclass(frozen=True)
class MissRecord:
    """A lease that started cold, and why: new | collected | corrupt | mismatch | restore_failed | unfinished.
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
    live_bytes: int  # accounted now: live KV and state buffers
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
    forked_workspaces: int  # known workspaces that began as a fork (WorkspaceInfo.forked_from)
    on_probation: int  # of those, forks still used too little to be kept like the rest (pool/keeping.py)
    writes_cancelled: int  # evicted states restored from memory before their write began (not written)
    kept_states: int  # evicted states on disk and still in memory (accounted in live_bytes; dropped first)
    snapshots_written: int
    snapshot_failures: int
    collected: int  # snapshots removed by the disk budget
    forks: int  # workspaces forked (explicitly, or for a new session by SessionPool.fork_nearest)
    prewarms: int  # prewarms started (SessionPool.prewarm)
    spares_opened: int  # contexts opened ahead of need (SessionPool(spare_ahead=True))
    prewarm_outcomes: Mapping[str, int]  # ended prewarms by outcome: completed, joined, cancelled, superseded...
    recent_misses: tuple[MissRecord, ...]
    # Cumulative seconds spent moving states: export (evictions, checkpoints), read (snapshot read and
    # verify), import (into a context), wait (for memory room), write (the background writer's puts),
    # fork (copying a source's state into a fork, export or read included).
    transfer_seconds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Gauges:
    """The part of PoolStats measured when stats() is called; the rest is counted as it happens."""

    live_workspaces: int
    evicted_workspaces: int
    live_bytes: int
    peak_live_bytes: int
    memory_budget_bytes: int | None
    snapshot_bytes: int
    disk_budget_bytes: int | None
    pending_writes: int
    kept_states: int
    forked_workspaces: int
    on_probation: int


class StatsRecorder:
    """Counters, miss reasons, recent misses and transfer seconds; thread-safe on a lock of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._miss_reasons: Counter[str] = Counter()
        self._prewarm_outcomes: Counter[str] = Counter()
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._recent: deque[MissRecord] = deque(maxlen=_RECENT_MISSES)

    def count(self, *names: str) -> None:
        """Add one to each counter named, at once."""
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def miss(self, workspace_id: str, reason: str, error: str, detail: str) -> None:
        with self._lock:
            self._counts["misses"] += 1
            self._miss_reasons[reason] += 1
            self._recent.append(MissRecord(workspace_id, reason, error, detail, time.time()))

    def prewarm_ended(self, outcome: str) -> None:
        with self._lock:
            self._prewarm_outcomes[outcome] += 1

    def add_seconds(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] += seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(name, time.perf_counter() - began)

    def report(self, gauges: Gauges) -> PoolStats:
        with self._lock:
            c = self._counts
            return PoolStats(
                **asdict(gauges),
                hits=c["hits"],
                restores=c["restores"],
                restores_from_memory=c["restores_from_memory"],
                misses=c["misses"],
                miss_reasons=dict(self._miss_reasons),
                evictions=c["evictions"],
                writes_cancelled=c["writes_cancelled"],
                snapshots_written=c["snapshots_written"],
                snapshot_failures=c["snapshot_failures"],
                collected=c["collected"],
                forks=c["forks"],
                prewarms=c["prewarms"],
                spares_opened=c["spares_opened"],
                prewarm_outcomes=dict(self._prewarm_outcomes),
                recent_misses=tuple(self._recent),
                transfer_seconds={k: round(v, 6) for k, v in self._seconds.items()},
            )
