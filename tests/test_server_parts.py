"""Server parts without a model: the generation bridge, the metrics exposition, validation errors."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamanode.pool import PoolStats
from llamanode.server.admission import AdmissionStats
from llamanode.server.bridge import Bridge
from llamanode.server.call import CLIENT_GONE, Cancellation, Cancelled
from llamanode.server.errors import from_validation
from llamanode.server.metrics import POOL_COUNTERS, POOL_GAUGES, POOL_OTHER, Metrics


def test_the_bridge_hands_items_over_in_order_with_backpressure() -> None:
    emitted: list[int] = []

    def work(bridge: Bridge[int]) -> None:
        for i in range(10):
            bridge.emit(i)
            emitted.append(i)

    async def scenario() -> list[int]:
        with ThreadPoolExecutor(1) as executor:
            bridge: Bridge[int] = Bridge(executor, Cancellation(), buffer=3)
            bridge.start(work)
            await asyncio.sleep(0.2)
            assert len(emitted) == 3  # the producer waits for the consumer
            got = []
            while (item := await bridge.get()) is not None:
                got.append(item)
            await bridge.finish(delivered=True)
            return got

    assert asyncio.run(scenario()) == list(range(10))


def test_cancelling_stops_a_producer_blocked_on_a_full_buffer() -> None:
    outcome: list[str] = []

    def work(bridge: Bridge[int]) -> None:
        try:
            for i in range(1000):
                bridge.emit(i)
        except Cancelled as exc:
            outcome.append(exc.reason)
            raise

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            cancel = Cancellation()
            bridge: Bridge[int] = Bridge(executor, cancel, buffer=2)
            bridge.start(work)
            assert await bridge.get() == 0
            await asyncio.sleep(0.1)
            cancel.cancel(CLIENT_GONE)
            with pytest.raises(Cancelled):
                while await bridge.get() is not None:
                    pass
            await asyncio.wait_for(bridge.finish(delivered=False), 5)

    asyncio.run(scenario())
    assert outcome == [CLIENT_GONE]


def test_the_work_learns_whether_its_answer_was_delivered() -> None:
    seen: list[bool] = []

    def work(bridge: Bridge[str]) -> None:
        bridge.emit("answer")
        seen.append(bridge.delivered())

    async def scenario(delivered: bool) -> None:
        before = len(seen)
        with ThreadPoolExecutor(1) as executor:
            bridge: Bridge[str] = Bridge(executor, Cancellation())
            bridge.start(work)
            assert await bridge.get() == "answer"
            await asyncio.sleep(0.05)
            assert len(seen) == before  # the work still waits for the verdict
            await asyncio.wait_for(bridge.finish(delivered=delivered), 5)

    asyncio.run(scenario(True))
    asyncio.run(scenario(False))
    assert seen == [True, False]


def test_an_exception_in_the_work_reaches_the_consumer() -> None:
    def work(bridge: Bridge[int]) -> None:
        bridge.emit(1)
        raise ValueError("boom")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            bridge: Bridge[int] = Bridge(executor, Cancellation())
            bridge.start(work)
            assert await bridge.get() == 1
            with pytest.raises(ValueError, match="boom"):
                await bridge.get()
            await bridge.finish(delivered=False)

    asyncio.run(scenario())


def _stats(**overrides: Any) -> PoolStats:
    values: dict[str, Any] = {f.name: 0 for f in dataclasses.fields(PoolStats)}
    values.update(
        memory_budget_bytes=None, miss_reasons={}, recent_misses=(), transfer_seconds={}, disk_budget_bytes=None
    )
    values.update(prewarm_outcomes={})
    values.update(overrides)
    return PoolStats(**values)


def _scrape(metrics: Metrics) -> dict[str, Any]:
    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def test_every_pool_stat_is_exported() -> None:
    names = {f.name for f in dataclasses.fields(PoolStats)}
    assert names == set(POOL_COUNTERS) | set(POOL_GAUGES) | set(POOL_OTHER)


def test_metrics_parse_as_prometheus_text_with_escaped_labels() -> None:
    stats = _stats(hits=3, forks=1, live_workspaces=2, miss_reasons={'odd"reason\\\nx': 2, "new": 1})
    stats = dataclasses.replace(stats, transfer_seconds={"read": 0.5}, memory_budget_bytes=1 << 20)
    stats = dataclasses.replace(stats, prewarms=2, prewarm_outcomes={"joined": 1, "cancelled": 1})
    metrics = Metrics(lambda: stats, lambda: AdmissionStats(queued=1, active=2, parallel=2, max_queue=4))
    metrics.requests.labels(route='/a"b\nc', status="200").inc()
    metrics.ttft.observe(0.3)
    families = _scrape(metrics)
    assert families["llamanode_pool_hits"].type == "counter"
    assert families["llamanode_pool_hits"].samples[0].name == "llamanode_pool_hits_total"
    assert families["llamanode_pool_hits"].samples[0].value == 3
    misses = {s.labels["reason"]: s.value for s in families["llamanode_pool_misses"].samples}
    assert misses == {'odd"reason\\\nx': 2, "new": 1}  # the library escapes and the parser unescapes
    assert families["llamanode_pool_prewarms"].samples[0].value == 2
    outcomes = {s.labels["outcome"]: s.value for s in families["llamanode_pool_prewarm_outcomes"].samples}
    assert outcomes == {"joined": 1, "cancelled": 1}
    assert {s.labels["route"] for s in families["llamanode_requests"].samples} == {'/a"b\nc'}
    assert families["llamanode_pool_memory_budget_bytes"].samples[0].value == 1 << 20
    assert "llamanode_pool_disk_budget_bytes" not in families  # not set: not exported as 0
    assert families["llamanode_queue_depth"].samples[0].value == 1
    assert any(s.name == "llamanode_ttft_seconds_bucket" for s in families["llamanode_ttft_seconds"].samples)
    assert "process_cpu_seconds" in families
    created = [s.name for f in families.values() for s in f.samples if s.name.endswith("_created")]
    assert created == []


def test_validation_errors_are_400_with_a_code() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error", "ctx": {"error": "x"}},
            "invalid_json",
        ),
        ({"type": "missing", "loc": ("body",), "msg": "Field required"}, "invalid_json"),
        ({"type": "model_attributes_type", "loc": ("body",), "msg": "not an object"}, "invalid_json"),
        ({"type": "extra_forbidden", "loc": ("body", "tools"), "msg": "Extra inputs"}, "unknown_field"),
        ({"type": "string_pattern_mismatch", "loc": ("path", "id"), "msg": "bad"}, "invalid_workspace"),
        (
            {"type": "string_pattern_mismatch", "loc": ("header", "X-Llamanode-Workspace"), "msg": "bad"},
            "invalid_workspace",
        ),
        ({"type": "int_type", "loc": ("body", "max_tokens"), "msg": "Input should be an int"}, "invalid_value"),
    ]
    for error, code in cases:
        api_error = from_validation([error])
        assert (api_error.status, api_error.code) == (400, code), error


def test_cancellation_runs_its_callbacks_once_with_the_first_reason() -> None:
    async def scenario() -> None:
        cancel = Cancellation()
        calls: list[int] = []
        cancel.on_cancel(lambda: calls.append(1))
        cancel.cancel(CLIENT_GONE)
        cancel.cancel("shutdown")
        assert cancel.reason == CLIENT_GONE and calls == [1]
        assert await asyncio.wait_for(cancel.wait(), 1) == CLIENT_GONE

    asyncio.run(scenario())


def test_a_thread_sees_the_cancellation_at_its_next_check() -> None:
    async def scenario() -> float:
        cancel = Cancellation()
        stopped = threading.Event()
        checks = 0

        def loop() -> None:
            nonlocal checks
            try:
                while True:
                    cancel.check()
                    checks += 1
                    time.sleep(0.001)
            except Cancelled:
                stopped.set()

        thread = threading.Thread(target=loop)
        thread.start()
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        cancel.cancel(CLIENT_GONE)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait, 5)
        thread.join(5)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 0.5
