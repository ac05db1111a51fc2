"""The agent replay benchmark's bookkeeping (bench/bench_agents.py, bench/agent_report.py): which recorded
requests are replayed and how sessions are numbered, the interleaving, and the targets' verdicts.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from agent_report import markdown, targets, totals
from bench_agents import interleave, load_agent, recording_files


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
