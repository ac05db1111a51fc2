"""Prometheus metrics through prometheus-client: request and generation counters, histograms, and the
pool's cumulative counts as counters (`_total`, only going up) read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .admission import AdmissionStats

__all__ = ["POOL_COUNTERS", "POOL_GAUGES", "Metrics"]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)

# PoolStats field -> help text. Cumulative counts are counters; the rest are gauges.
POOL_COUNTERS = {
    "hits": "Leases of a live workspace",
    "restores": "Leases that restored an evicted workspace",
    "restores_from_memory": "Restores from a state still in memory (no disk read)",
    "evictions": "Workspaces evicted to make room",
    "writes_cancelled": "Evicted states restored before their write began (never written)",
    "snapshots_written": "Snapshots written to disk",
    "snapshot_failures": "Snapshot writes that failed",
    "collected": "Snapshots removed by the disk budget",
    "forks": "Workspaces forked",
    "prewarms": "Background prewarms started",
    "spares_opened": "Contexts opened ahead of need, for the next new or forked workspace",
}
POOL_GAUGES = {
    "live_bytes": "Bytes accounted now: live KV and state buffers",
    "peak_live_bytes": "Highest live_bytes so far",
    "memory_budget_bytes": "The memory budget",
    "snapshot_bytes": "Bytes of snapshots on disk",
    "disk_budget_bytes": "The disk budget",
    "pending_writes": "Evicted states not yet on disk",
    "kept_states": "Written states still kept in memory",
    "forked_workspaces": "Known workspaces that began as a fork",
    "on_probation": "Forks used too little yet to be kept like the rest (evicted and collected first)",
}
# Read by other collectors, or not a number: exported elsewhere or not at all.
POOL_OTHER = (
    *("live_workspaces", "evicted_workspaces", "misses", "miss_reasons", "recent_misses", "transfer_seconds"),
    "prewarm_outcomes",
)


class Metrics:
    """Every metric the server exports, in a registry of its own."""

    def __init__(self, pool_stats: Callable[[], Any], admission_stats: Callable[[], AdmissionStats]) -> None:
        # No *_created series: one sample per counter and label set.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "llamanode_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.refusals = Counter(
            "llamanode_refusals", "Requests refused before any work (queue full, too large...)", ["status"], registry=r
        )
        self.client_disconnects = Counter(
            "llamanode_client_disconnects", "Requests abandoned because the client went away", registry=r
        )
        self.protocol_errors = Counter(
            "llamanode_protocol_errors", "Connections closed for HTTP protocol errors or timeouts", ["kind"], registry=r
        )
        self.warm_next_tokens = Counter(
            "llamanode_warm_next_tokens", "Answer tokens prefilled ahead of the next turn", registry=r
        )
        self.warm_next_started = Counter(
            "llamanode_warm_next_started", "Answers whose warm-next prewarm started", registry=r
        )
        self.warm_next = Counter(
            "llamanode_warm_next",
            "Answers prewarmed for the next turn, by how the prewarm ended (completed, joined by the next request,"
            " cancelled...)",
            ["outcome"],
            registry=r,
        )
        self.prompt_tokens_reused = Counter(
            "llamanode_prompt_tokens_reused", "Prompt tokens reused from a warm prefix", registry=r
        )
        self.prompt_tokens_prefilled = Counter(
            "llamanode_prompt_tokens_prefilled", "Prompt tokens prefilled (prefix tail + suffix)", registry=r
        )
        self.route_forks = Counter(
            "llamanode_route_forks",
            "New named sessions started as a fork of the workspace sharing their prompt's longest prefix, by what"
            " named the session (header, user, ...) and outcome (forked, failed: started cold)",
            ["named_by", "outcome"],
            registry=r,
        )
        self.generated_tokens = Counter("llamanode_generated_tokens", "Tokens generated", registry=r)
        self.generations = Counter("llamanode_generations", "Generations by outcome", ["outcome"], registry=r)
        self.ttft = Histogram(
            "llamanode_ttft_seconds", "Request arrival to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.decode_tps = Histogram(
            "llamanode_decode_tokens_per_second", "Decode speed per generation", buckets=TPS_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "llamanode_queue_wait_seconds", "Time spent queued before running", buckets=WAIT_BUCKETS, registry=r
        )
        queued = Gauge("llamanode_queue_depth", "Requests waiting for a workspace or a compute slot", registry=r)
        queued.set_function(lambda: admission_stats().queued)
        active = Gauge("llamanode_active_requests", "Requests running", registry=r)
        active.set_function(lambda: admission_stats().active)
        r.register(_PoolCollector(pool_stats))
        ProcessCollector(registry=r)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the Accept header asks for, and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _PoolCollector(Collector):
    """The workspace pool's stats, read at scrape time."""

    def __init__(self, pool_stats: Callable[[], Any]) -> None:
        self._pool_stats = pool_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._pool_stats()
        workspaces = GaugeMetricFamily("llamanode_workspaces", "Workspaces by state", labels=["state"])
        workspaces.add_metric(["live"], stats.live_workspaces)
        workspaces.add_metric(["evicted"], stats.evicted_workspaces)
        yield workspaces
        for name, help_text in POOL_COUNTERS.items():
            yield CounterMetricFamily(f"llamanode_pool_{name}", help_text, value=getattr(stats, name))
        for name, help_text in POOL_GAUGES.items():
            value = getattr(stats, name)
            if value is not None:  # a budget that is not set
                yield GaugeMetricFamily(f"llamanode_pool_{name}", help_text, value=value)
        misses = CounterMetricFamily("llamanode_pool_misses", "Leases that started cold, by reason", labels=["reason"])
        for reason, count in sorted(stats.miss_reasons.items()):
            misses.add_metric([reason], count)
        yield misses
        seconds = CounterMetricFamily(
            "llamanode_pool_transfer_seconds",
            "Seconds spent moving workspace states, by kind (export, read, import, wait, write, fork)",
            labels=["kind"],
        )
        for kind, value in sorted(stats.transfer_seconds.items()):
            seconds.add_metric([kind], value)
        yield seconds
        prewarms = CounterMetricFamily(
            "llamanode_pool_prewarm_outcomes", "Finished prewarms, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(stats.prewarm_outcomes.items()):
            prewarms.add_metric([outcome], count)
        yield prewarms
