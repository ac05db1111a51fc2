"""A new session starts warm: a request naming a workspace the server does not know forks the one sharing
its prompt's longest prefix. Routing decisions on a stand-in pool, then real server processes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llamanode import ForkOrigin, SnapshotError
from llamanode.errors import SessionClosedError
from llamanode.server.admission import AdmissionStats
from llamanode.server.call import Call
from llamanode.server.metrics import Metrics
from llamanode.server.prepare import SessionKey, route_workspace
from llamanode.server.settings import ServerSettings
from test_server_support import ServerProcess, chat, locked_server, server, start_server

__all__ = ["locked_server", "server"]


def opening(tools: int) -> str:
    """A long agent opening: about 36 tokens per tool line on the default model."""
    lines = "\n".join(
        f"- tool_{i}(path: str, limit: int = {i * 10}) -> str: reads part {i} of the file at path and returns it"
        for i in range(tools)
    )
    return "You are a coding agent working in a Python repository. Answer in one short sentence. Tools:\n" + lines


def messages(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


# -- the routing decision, on a stand-in pool ---------------------------------------------------------------
class _Pool:
    def __init__(self, known: set[str], outcome: ForkOrigin | Exception | None, candidate: str | None = "src") -> None:
        self.known = known
        self.outcome = outcome
        self.candidate = candidate  # what longest_prefix finds
        self.asked: list[tuple[str, int]] = []

    def has_workspace(self, workspace_id: str) -> bool:
        return workspace_id in self.known

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def longest_prefix(self, tokens: list[int], min_tokens: int) -> tuple[str | None, int]:
        return (self.candidate, min_tokens) if self.candidate else (None, 0)

    def fork_nearest(self, dst: str, tokens: list[int], min_tokens: int) -> ForkOrigin | None:
        self.asked.append((dst, min_tokens))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class _Engine:
    async def run(self, call: Call, workspace: str | None, fn: Any) -> Any:
        return fn()


def _route(pool: _Pool, header: str | None, key: SessionKey | None, fork_min: int = 8) -> tuple[str, Call, Metrics]:
    def no_stats() -> Any:
        raise AssertionError("not scraped here")

    metrics = Metrics(no_stats, lambda: AdmissionStats(0, 0, 1, 1))
    settings = ServerSettings(fork_min_tokens=fork_min)
    rt = SimpleNamespace(settings=settings, pool=pool, engine=_Engine(), metrics=metrics)
    call = Call("POST", "/v1/chat/completions")
    workspace = asyncio.run(route_workspace(rt, call, header, key, "a shared opening, then a question"))  # type: ignore[arg-type]
    return workspace, call, metrics


def _forks(metrics: Metrics, named_by: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value("llamanode_route_forks_total", {"named_by": named_by, "outcome": outcome})
    return value or 0.0


def test_a_new_named_session_is_forked_and_says_from_where() -> None:
    origin = ForkOrigin("user-abc", 120, 100, 0.0)
    key = SessionKey("user", "alice")
    for header, named_by in ((None, "user"), ("my-task", "header")):
        pool = _Pool(set(), origin)
        workspace, call, metrics = _route(pool, header, key)
        assert workspace == (header or key.workspace()) and pool.asked == [(workspace, 8)]
        assert call.log["routed_by"] == "fork" and call.log["named_by"] == named_by
        assert call.log["fork_source"] == "user-abc" and call.log["fork_shared_tokens"] == 100
        assert _forks(metrics, named_by, "forked") == 1


def test_a_known_session_a_small_share_or_no_minimum_is_routed_as_before() -> None:
    key = SessionKey("user", "alice")
    origin = ForkOrigin("x", 1, 1, 0.0)
    known = _Pool({key.workspace()}, origin)
    assert _route(known, None, key)[1].log == {"routed_by": "user"} and known.asked == []
    unrelated = _Pool(set(), origin, candidate=None)  # nothing shares enough: no compute slot is taken
    workspace, call, _ = _route(unrelated, "new-one", None)
    assert workspace == "new-one" and call.log == {"routed_by": "header"} and unrelated.asked == []
    raced = _Pool(set(), None)  # a candidate, but the fork found the workspace made meanwhile
    assert _route(raced, "new-two", None)[1].log == {"routed_by": "header", "workspace": "new-two"} and raced.asked
    short = _Pool(set(), origin)  # fewer bytes than the minimum has tokens: not even tokenized
    assert _route(short, "new-three", None, fork_min=100)[1].log == {"routed_by": "header"} and short.asked == []
    off = _Pool(set(), origin)
    assert _route(off, "new-four", None, fork_min=0)[1].log == {"routed_by": "header"} and off.asked == []


def test_a_failed_fork_starts_cold_and_says_why_but_a_closed_pool_is_an_error() -> None:
    failing = _Pool(set(), SnapshotError("the source's snapshot is damaged"))
    workspace, call, metrics = _route(failing, "t", None)
    assert workspace == "t" and call.log["routed_by"] == "header" and call.log["workspace"] == "t"
    assert call.log["fork_error"] == "SnapshotError: the source's snapshot is damaged"
    assert _forks(metrics, "header", "failed") == 1
    with pytest.raises(SessionClosedError):
        _route(_Pool(set(), SessionClosedError("the session pool is closed")), "t", None)


# -- a real server ---------------------------------------------------------------------------------------
def test_a_second_session_with_the_same_opening_starts_warm_and_answers_like_a_cold_server(
    server: ServerProcess, locked_server: ServerProcess
) -> None:
    """A 700-token opening on the shared servers (the second one never saw it: its new session starts cold)."""
    _second_session(server, locked_server, opening(20), "short")


def test_two_requests_with_the_same_new_key_fork_once(server: ServerProcess) -> None:
    system = opening(20)
    chat(server, messages(system, "Which tool reads part 5?"), max_tokens=4, user="race-source")
    mark = server.mark()
    forks_before = server.metrics().get('llamanode_route_forks_total{named_by="user",outcome="forked"}', 0.0)
    asked = messages(system, "Which tool reads part 9?")
    answers: list[Any] = []
    start = threading.Barrier(2)

    def ask() -> None:
        start.wait()
        answers.append(chat(server, asked, max_tokens=8, user="race-new"))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 2 and answers[0].choices[0].message.content == answers[1].choices[0].message.content
    logs = server.wait_logs(mark, 2, "/v1/chat/completions")
    assert sorted(line["routed_by"] for line in logs) == ["fork", "user"]  # the second found the fork
    assert all(line["status"] == 200 and line["reused_tokens"] > 600 for line in logs)
    forks_after = server.metrics()['llamanode_route_forks_total{named_by="user",outcome="forked"}']
    assert forks_after == forks_before + 1


@pytest.mark.slow
def test_a_3k_token_opening_is_forked_and_answers_like_a_cold_server() -> None:
    server = start_server("--ctx", "4096")
    reference = start_server("--ctx", "4096", "--fork-min-tokens", "0")  # starts every new session cold
    try:
        _second_session(server, reference, opening(83), "long")
    finally:
        server.stop()
        reference.stop()


def _second_session(server: ServerProcess, reference: ServerProcess, system: str, name: str) -> None:
    n_opening = len(system) // 3  # a lower bound on its tokens (about 3.4 bytes per token here)
    first = chat(server, messages(system, "Which tool reads part 3?"), max_tokens=12, user=f"fork-{name}-1")
    source = SessionKey("user", f"fork-{name}-1").workspace()
    mark = server.mark()
    asked = messages(system, "Name the tool with limit 70.")
    second = chat(server, asked, max_tokens=24, user=f"fork-{name}-2")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert second.usage.prompt_tokens > n_opening and cached > 0.95 * second.usage.prompt_tokens
    (log,) = server.wait_logs(mark, 1, "/v1/chat/completions")
    assert log["routed_by"] == "fork" and log["named_by"] == "user" and log["fork_source"] == source
    assert log["reused_tokens"] == cached and log["fork_shared_tokens"] >= cached - 2

    cold = chat(reference, asked, max_tokens=24, user=f"fork-{name}-cold")
    assert cold.usage.prompt_tokens_details.cached_tokens == 0  # the same request, started cold
    assert second.choices[0].message.content == cold.choices[0].message.content
    assert second.usage.completion_tokens == cold.usage.completion_tokens
    assert second.choices[0].finish_reason == cold.choices[0].finish_reason

    with server.http() as http:  # the new workspace says where it began
        workspace = log["workspace"]
        context = http.get(f"/v1/llamanode/sessions/{workspace}/context").json()
        assert context["forked_from"]["source"] == source
        assert http.get(f"/v1/llamanode/sessions/{workspace}").json()["forked_from"] == source
        assert http.get(f"/v1/llamanode/sessions/{source}").json()["live"]
    mark = server.mark()
    again = chat(server, messages(system, "Which tool reads part 3?"), max_tokens=12, user=f"fork-{name}-1")
    assert again.choices[0].message.content == first.choices[0].message.content
    (log,) = server.wait_logs(mark, 1, "/v1/chat/completions")
    assert log["routed_by"] == "user" and log["prefilled_tokens"] == 0  # the source was not disturbed
    samples = server.metrics()
    assert samples['llamanode_route_forks_total{named_by="user",outcome="forked"}'] >= 1


@pytest.mark.slow
def test_fifty_short_sessions_under_small_budgets_keep_the_main_workspace_warm(tmp_path: Path) -> None:
    snapshot_limit = 64 << 20  # a snapshot of this opening is about 16 MB
    proc = start_server("--max-live", "2", "--disk-budget", str(snapshot_limit), store=str(tmp_path / "store"))
    try:
        _fifty_sessions(proc, opening(16), snapshot_limit, tmp_path / "store")
    finally:
        proc.stop()


def _fifty_sessions(proc: ServerProcess, system: str, disk_budget: int, store: Path) -> None:
    main = messages(system, "Which tool reads part 3?")
    chat(proc, main, max_tokens=4, workspace="main-agent")
    mark = proc.mark()
    for i in range(50):
        task = messages(system, f"Task {i}: which tool has limit {i * 10 % 160}?")
        assert chat(proc, task, max_tokens=4, user=f"t{i}").usage.prompt_tokens_details.cached_tokens > 500
        if i % 10 == 9:  # the agent comes back to its main workspace between tasks: a hit every time
            _main_turn_is_a_hit(proc, main)
    logs = proc.wait_logs(mark, 55, "/v1/chat/completions")
    assert [line["status"] for line in logs] == [200] * 55
    assert sum(line["routed_by"] == "fork" for line in logs) == 50
    samples = proc.metrics()
    assert samples["llamanode_pool_evictions_total"] >= 40 and samples["llamanode_pool_collected_total"] > 0
    assert samples["llamanode_pool_peak_live_bytes"] <= samples["llamanode_pool_memory_budget_bytes"]
    deadline = time.monotonic() + 60
    while proc.metrics()["llamanode_pool_pending_writes"] and time.monotonic() < deadline:
        time.sleep(0.1)  # no write in flight: the files are what the index lists
    on_disk = sum(f.stat().st_size for f in (store / "snapshots").iterdir())
    assert on_disk == proc.metrics()["llamanode_pool_snapshot_bytes"] <= disk_budget


def _main_turn_is_a_hit(proc: ServerProcess, main: list[dict[str, str]]) -> None:
    """The main workspace was never evicted: its turn is a pool hit (no restore, no miss), its prefix all warm."""

    def counts() -> dict[str, float]:
        proc.mark()  # every earlier request's work is done
        keep = ("llamanode_pool_hits_total", "llamanode_pool_restores_total", "llamanode_pool_misses_total")
        return {k: v for k, v in proc.metrics().items() if k.startswith(keep)}

    before = counts()
    mark = proc.mark()
    chat(proc, main, max_tokens=4, workspace="main-agent")
    (line,) = proc.wait_logs(mark, 1, "/v1/chat/completions")
    assert line["prefilled_tokens"] == 0 and line["reused_tokens"] > 500
    after = counts()
    assert after.pop("llamanode_pool_hits_total") == before.pop("llamanode_pool_hits_total") + 1
    assert after == before
