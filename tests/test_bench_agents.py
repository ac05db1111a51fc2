"""The agent replay benchmark's bookkeeping (bench/agents.py, bench/agent_report.py): which recorded
requests are replayed and how sessions are numbered, the interleaving, and the targets' verdicts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.agent_report import markdown, targets, totals
from bench.agents import Recorded, interleave, load_agent, median_phases, recording_files, repeated, split_at_restart
from bench.processes import LLAMA_SERVER

REPO = Path(__file__).resolve().parents[1]


def _record(seq: int, session: str | None, path: str = "/v1/messages?beta=true", **body: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "label": "claude",
        "session": session,
        "method": "POST" if body else "HEAD",
        "path": path,
        "headers": {"anthropic-version": "v", "content-length": "9", "host": "x"},
        "body": body or None,
    }


def test_load_agent_numbers_sessions_and_turns_and_skips_probes(tmp_path: Path) -> None:
    records = [
        _record(0, None, "/"),
        _record(2, "B", model="m"),
        _record(1, "A", model="m"),
        _record(3, "A", model="m"),
    ]
    records.append(_record(4, None, "/v1/chat/completions", model="m", stream=True))
    path = tmp_path / "claude.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = load_agent(path, None)
    assert [(r.session, r.turn) for r in loaded] == [("s1", 1), ("s2", 1), ("s1", 2), ("s3", 1)]
    assert all("content-length" not in r.headers and "host" not in r.headers for r in loaded)
    assert loaded[0].headers == {"anthropic-version": "v"}
    assert loaded[-1].body["stream_options"] == {"include_usage": True}  # every server then reports usage
    assert "stream_options" not in loaded[0].body
    assert [(r.session, r.turn) for r in load_agent(path, 1)] == [("s1", 1), ("s2", 1), ("s3", 1)]
    assert recording_files([tmp_path]) == [path]


def test_load_agent_keeps_each_requests_recorded_idle_time(tmp_path: Path) -> None:
    """--pace waits, before each request, the time its agent spent since the previous generation request
    ended (other requests, count_tokens here, are the agent's own work); 0 where the clock is missing."""
    clocks = [(0.5, 10.0), (10.7, 0.1), (11.0, 2.0), (14.5, 1.0), (None, None), (20.0, 1.0)]
    paths = ["/v1/messages", "/v1/messages/count_tokens"] + ["/v1/messages"] * 4
    records = [
        {**_record(i, "A", path, model="m"), "arrival_s": arrival, "total_s": total}
        for i, (path, (arrival, total)) in enumerate(zip(paths, clocks, strict=True))
    ]
    path = tmp_path / "claude.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [r.idle_s for r in load_agent(path, None)] == pytest.approx([0.0, 0.5, 1.5, 0.0, 0.0])


def test_load_agent_can_leave_the_tool_definitions_out(tmp_path: Path) -> None:
    tools = {"tools": [{"name": "Bash", "input_schema": {}}], "tool_choice": {"type": "auto"}}
    path = tmp_path / "claude.jsonl"
    path.write_text(json.dumps(_record(0, "A", model="m", messages=[], **tools)) + "\n")
    assert load_agent(path, None)[0].body["tools"] == tools["tools"]
    assert load_agent(path, None, without_tools=True)[0].body == {"model": "m", "messages": []}


def test_interleave_takes_turns() -> None:
    assert interleave([1, 2, 3], ["a"]) == [1, "a", 2, 3]  # type: ignore[list-item]


def _row(agent: str, session: str, turn: int, prompt: int, cached: int, ttft: float | None) -> dict[str, Any]:
    return {
        "agent": agent,
        "session": session,
        "turn": turn,
        "api": "anthropic",
        "status": 200 if ttft else 404,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "output_tokens": 1,
        "usage_source": "usage",
        "ttft_s": ttft,
        "total_s": ttft or 0.1,
        "error": None,
        "reuse": cached / prompt if prompt else None,
    }


def _results(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"servers": {"llamanode": {"sequential": ours}, "llama-server": {"sequential": theirs}}}


def test_repeated_rounds_alternate_the_servers_and_report_medians() -> None:
    order: list[str] = []
    ttfts = iter([1.0, 9.0, 3.0, 4.0, 2.0, 5.0])

    def run(kind: str) -> dict[str, list[dict[str, Any]]]:
        order.append(kind)
        return {"sequential": [_row("claude", "s1", 1, 100, 0, next(ttfts))]}

    reps = repeated(["llamanode", "llama-server"], 3, run)
    assert order == ["llamanode", "llama-server", "llama-server", "llamanode", "llamanode", "llama-server"]
    (ours,) = median_phases(reps["llamanode"])["sequential"]
    (theirs,) = median_phases(reps["llama-server"])["sequential"]
    assert (ours["ttft_s"], theirs["ttft_s"]) == (2.0, 5.0)  # medians of (1, 4, 2) and (9, 3, 5)
    failed = median_phases([{"sequential": [_row("claude", "s1", 1, 100, 0, None)]}, reps["llamanode"][0]])
    assert failed["sequential"][0]["ttft_s"] is None  # a request that failed once has no median


def test_targets_pass_when_llamanode_is_warm_and_faster() -> None:
    ours = [_row("claude", "s1", 1, 4000, 0, 10.0), _row("claude", "s1", 2, 4100, 4000, 0.5),
            _row("claude", "s2", 1, 4000, 3900, 0.6)]  # fmt: skip
    theirs = [_row("claude", "s1", 1, 4000, 0, 12.0), _row("claude", "s1", 2, 4100, 4000, 0.5),
              _row("claude", "s2", 1, 4000, 20, 11.0)]  # fmt: skip
    verdicts = {name: (value, v) for name, agent, value, v in targets(_results(ours, theirs))}
    assert verdicts["llamanode sequential: every later request reuses >= 90 % (min)"] == (4000 / 4100, "PASS")
    ratio, verdict = verdicts["total TTFT, llamanode / llama-server <= 0.9"]
    assert math.isclose(ratio, 11.1 / 23.5) and verdict == "PASS"
    assert verdicts["session s2 first-request TTFT, llamanode / llama-server <= 1"][1] == "PASS"
    assert totals(ours)["claude"].first_ttft_s == {"s1": 10.0, "s2": 0.6}
    assert "| claude | llamanode |" in markdown(_results(ours, theirs))


def test_targets_miss_on_a_cold_later_request_and_say_n_a_on_errors() -> None:
    ours = [_row("codex", "s1", 1, 4000, 0, 10.0), _row("codex", "s1", 2, 4100, 100, None)]
    theirs = [_row("codex", "s1", 1, 4000, 0, 10.0), _row("codex", "s1", 2, 4100, 4000, 0.5)]
    verdicts = {name: v for name, agent, value, v in targets(_results(ours, theirs))}
    assert verdicts["llamanode sequential: every later request reuses >= 90 % (min)"] == "MISS"
    assert verdicts["total TTFT, llamanode / llama-server <= 0.9"] == "n/a"  # a request without TTFT
    assert totals(ours)["codex"].errors == 1


def test_a_failed_request_leaves_a_total_over_the_requests_both_served() -> None:
    ours = [_row("codex", "s1", 1, 4000, 0, 8.0), _row("codex", "s1", 2, 4100, 4000, 0.5),
            _row("codex", "s2", 1, 4000, 3900, 3.0)]  # fmt: skip
    theirs = [_row("codex", "s1", 1, 4000, 0, 10.0), _row("codex", "s1", 2, 4100, 4000, None),
              _row("codex", "s2", 1, 4000, 3900, 1.0)]  # fmt: skip
    verdicts = {name: (value, v) for name, agent, value, v in targets(_results(ours, theirs))}
    assert verdicts["total TTFT, llamanode / llama-server <= 0.9"][1] == "n/a"
    value, verdict = verdicts["total TTFT over the requests both served, llamanode / llama-server <= 0.9"]
    assert math.isclose(value, 11.0 / 11.0) and verdict == "MISS"  # s1#2 left out on both sides
    complete = {name for name, *_ in targets(_results(ours, [*theirs[:1], *ours[1:2], *theirs[2:]]))}
    assert not any("both served" in name for name in complete)  # only when the full total is n/a


def _recorded(agent: str, session: str, turn: int) -> Recorded:
    return Recorded(agent, session, turn, "anthropic", "/v1/messages", {}, {})


def test_the_restart_splits_agents_with_several_sessions_at_their_second() -> None:
    claude = [_recorded("claude", s, t) for s, t in (("s1", 1), ("s1", 2), ("s2", 1), ("s2", 2))]
    codex = [_recorded("codex", s, t) for s, t in (("s1", 1), ("s2", 1), ("s3", 1))]
    aider = [_recorded("aider", "s1", t) for t in (1, 2, 3)]  # one session: nothing to restart between
    before, after = split_at_restart({"claude": claude, "aider": aider, "codex": codex})
    assert before == [claude[0], claude[1], codex[0]]
    assert after == [claude[2], claude[3], codex[1], codex[2]]


def test_the_restart_target_compares_the_sessions_after_it() -> None:
    ours = [_row("codex", "s1", 1, 4000, 0, 9.0), _row("codex", "s2", 1, 4000, 3900, 0.5),
            _row("codex", "s2", 2, 4100, 4000, 0.4)]  # fmt: skip
    theirs = [_row("codex", "s1", 1, 4000, 0, 8.0), _row("codex", "s2", 1, 4000, 0, 8.5),
              _row("codex", "s2", 2, 4100, 4000, 0.5)]  # fmt: skip
    results = {"servers": {"llamanode": {"restart": ours}, "llama-server": {"restart": theirs}}}
    rows = [(agent, value, v) for name, agent, value, v in targets(results) if name.startswith("after a restart")]
    assert rows == [("codex", pytest.approx(0.9 / 9.0), "PASS")]  # s1 (before the restart) left out
    slower = [*ours[:2], _row("codex", "s2", 2, 4100, 4000, 9.0)]
    results["servers"]["llamanode"]["restart"] = slower
    assert [v for name, _, _, v in targets(results) if name.startswith("after a restart")] == ["MISS"]
    assert "### Totals per agent (restart)" in markdown(results)
    theirs[2] = _row("codex", "s2", 2, 4100, 4000, None)  # llama-server failed it: compared without it
    results["servers"]["llamanode"]["restart"] = ours
    (row,) = [(name, value) for name, _, value, _ in targets(results) if name.startswith("after a restart")]
    assert "both served" in row[0] and row[1] == pytest.approx(0.5 / 8.5)


def _mini_recordings(where: Path, codex_sessions: int = 1) -> None:
    """Two short agents' worth of requests in the proxy's format: Anthropic and Responses, a shared opening
    (~450 tokens); Codex's later sessions open with it too, under a key of their own."""
    opening = "You are a careful coding agent. " + " ".join(f"Rule {i}: answer briefly." for i in range(60))
    user = [{"role": "user", "content": "List the files."}]
    more = [*user, {"role": "assistant", "content": "a.py"}, {"role": "user", "content": "Show a.py."}]
    claude = [
        {"seq": i, "label": "claude", "session": "S", "method": "POST", "path": "/v1/messages", "headers": {},
         "body": {"model": "m", "max_tokens": 8, "stream": True, "system": opening, "messages": messages}}
        for i, messages in enumerate((user, more))
    ]  # fmt: skip
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a.py"}]}
    items = [{"role": "developer", "content": opening}, {"role": "user", "content": "List the files."}]
    codex = [
        {"seq": i, "label": "codex", "session": "K", "method": "POST", "path": "/v1/responses", "headers": {},
         "body": {"model": "m", "max_output_tokens": 8, "stream": True, "prompt_cache_key": "K", "input": inputs}}
        for i, inputs in enumerate((items, [*items, said, {"role": "user", "content": "Show a.py."}]))
    ]  # fmt: skip
    for n in range(2, codex_sessions + 1):
        body = {
            **codex[0]["body"],
            "prompt_cache_key": f"K{n}",
            "input": [items[0], {"role": "user", "content": "Show b.py."}],
        }
        codex.append({**codex[0], "seq": len(codex), "session": f"K{n}", "body": body})
    for name, records in (("claude", claude), ("codex", codex)):
        (where / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.slow
@pytest.mark.skipif(not LLAMA_SERVER.exists(), reason=f"{LLAMA_SERVER} not built")
def test_replay_against_llama_server_writes_results_and_report(tmp_path: Path) -> None:
    _mini_recordings(tmp_path)
    out = tmp_path / "agents.json"
    cmd = [sys.executable, "-m", "bench.agents", str(tmp_path), "--servers", "llama-server",
           "--threads", "1", "--ctx", "2048", "--repack", "off", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    phases = results["servers"]["llama-server"]
    assert [(r["agent"], r["session"], r["turn"]) for r in phases["interleaved"]] == [
        ("claude", "s1", 1), ("codex", "s1", 1), ("claude", "s1", 2), ("codex", "s1", 2)
    ]  # fmt: skip
    sequential = phases["sequential"]
    assert [r["status"] for r in sequential] == [200] * 4
    assert all(r["prompt_tokens"] and r["ttft_s"] is not None for r in sequential)
    assert sequential[1]["reuse"] > 0.9  # the same slot, the same opening: llama-server reuses it
    assert results["settings"]["repack"] is False
    assert "### Targets" in proc.stdout and out.with_suffix(".md").is_file()


@pytest.mark.slow
def test_an_agents_next_session_after_a_restart_is_forked_from_the_stored_one(tmp_path: Path) -> None:
    _mini_recordings(tmp_path, codex_sessions=2)
    out = tmp_path / "agents.json"
    cmd = [sys.executable, "-m", "bench.agents", str(tmp_path / "codex.jsonl"), "--servers", "llamanode",
           "--interleave", "", "--restart", "--threads", "1", "--ctx", "2048", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restart = json.loads(out.read_text())["servers"]["llamanode"]["restart"]
    assert [(r["session"], r["turn"], r["status"]) for r in restart] == [("s1", 1, 200), ("s1", 2, 200), ("s2", 1, 200)]
    # the restarted server had only its store: the opening came from the first session's snapshot
    assert restart[2]["cached_tokens"] >= 256 and restart[0]["cached_tokens"] == 0
