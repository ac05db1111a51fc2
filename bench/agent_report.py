"""The agent replay's report: per-agent totals, targets (PASS/MISS) and markdown tables, from the results
that bench/agents.py writes (so `bench/agents.py --print-md results.json` re-renders a past run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .common import md_table, ratio, verdict

REUSE_TARGET = 0.90
TTFT_TARGET = 0.90
Row = dict[str, Any]


@dataclass(frozen=True)
class AgentTotals:
    """One agent's requests on one server in one phase."""

    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float  # sum over requests; nan when a request has no TTFT (an error)
    first_ttft_s: dict[str, float]  # session -> TTFT of its first request
    min_later_reuse: float  # lowest reuse among requests after a session's first; nan when none or unknown

    @property
    def reuse(self) -> float:
        return ratio(self.cached_tokens, self.prompt_tokens)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def totals(rows: Sequence[Row]) -> dict[str, AgentTotals]:
    out: dict[str, AgentTotals] = {}
    for agent in dict.fromkeys(r["agent"] for r in rows):
        mine = [r for r in rows if r["agent"] == agent]
        later = [_nan_if_none(r["reuse"]) for r in mine if r["turn"] > 1]
        out[agent] = AgentTotals(
            requests=len(mine),
            errors=sum(1 for r in mine if r["status"] >= 400 or r["status"] == 0),
            prompt_tokens=sum(r["prompt_tokens"] or 0 for r in mine),
            cached_tokens=sum(r["cached_tokens"] or 0 for r in mine),
            ttft_s=sum(_nan_if_none(r["ttft_s"]) for r in mine),
            first_ttft_s={r["session"]: _nan_if_none(r["ttft_s"]) for r in mine if r["turn"] == 1},
            min_later_reuse=min(later, key=lambda v: -1.0 if math.isnan(v) else v) if later else math.nan,
        )
    return out


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else verdict(ok)


def _at_most(ratio_value: float, bound: float) -> str:
    """The verdict on a ratio target: n/a when the ratio is unknown (a server failed a request)."""
    return _verdict(None if math.isnan(ratio_value) else ratio_value <= bound)


def targets(results: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """(target, agent, value, PASS/MISS/n/a) rows."""
    servers = results["servers"]
    ours = servers.get("llamanode", {})
    theirs = servers.get("llama-server", {})
    rows: list[tuple[str, str, float, str]] = []
    for phase, phase_rows in ours.items():
        for agent, t in totals(phase_rows).items():
            value = t.min_later_reuse
            ok = None if not any(r["turn"] > 1 for r in phase_rows if r["agent"] == agent) else value >= REUSE_TARGET
            rows.append((f"llamanode {phase}: every later request reuses >= 90 % (min)", agent, value, _verdict(ok)))
    ours_seq = totals(ours.get("sequential", []))
    theirs_seq = totals(theirs.get("sequential", []))
    for agent in [a for a in ours_seq if a in theirs_seq]:  # in recorded order (a set's varies by process)
        r = ratio(ours_seq[agent].ttft_s, theirs_seq[agent].ttft_s)
        rows.append(("total TTFT, llamanode / llama-server <= 0.9", agent, r, _at_most(r, TTFT_TARGET)))
        if math.isnan(r):  # a server failed a request: compare the requests both served, said as such
            r = common_ttft_ratio(ours.get("sequential", []), theirs.get("sequential", []), agent)
            name = "total TTFT over the requests both served, llamanode / llama-server <= 0.9"
            rows.append((name, agent, r, _at_most(r, TTFT_TARGET)))
        second = [s for s in ours_seq[agent].first_ttft_s if s != "s1" and s in theirs_seq[agent].first_ttft_s]
        for session in second:
            r = ratio(ours_seq[agent].first_ttft_s[session], theirs_seq[agent].first_ttft_s[session])
            name = f"session {session} first-request TTFT, llamanode / llama-server <= 1"
            rows.append((name, agent, r, _at_most(r, 1.0)))
    rows += restart_targets(ours.get("restart", []), theirs.get("restart", []))
    return rows


def restart_targets(ours: Sequence[Row], theirs: Sequence[Row]) -> list[tuple[str, str, float, str]]:
    """Per agent: total TTFT of the sessions replayed after the restart (every session but s1), ours / theirs,
    over the requests both served (named so when one server failed some)."""
    ours_after = [r for r in ours if r["session"] != "s1"]
    theirs_after = [r for r in theirs if r["session"] != "s1"]
    rows = []
    for agent in dict.fromkeys(r["agent"] for r in ours):
        if not any(r["agent"] == agent for r in theirs):
            continue
        served = all(r["ttft_s"] is not None for r in [*ours_after, *theirs_after] if r["agent"] == agent)
        name = "after a restart: later sessions' total TTFT" + ("" if served else " over the requests both served")
        r = common_ttft_ratio(ours_after, theirs_after, agent)
        rows.append((f"{name}, llamanode / llama-server <= 0.9", agent, r, _at_most(r, TTFT_TARGET)))
    return rows


def common_ttft_ratio(ours: Sequence[Row], theirs: Sequence[Row], agent: str) -> float:
    """Sum of TTFTs over agent's requests that both servers answered, ours / theirs (nan if none)."""

    def timed(rows: Sequence[Row]) -> dict[tuple[str, int], float]:
        return {(r["session"], r["turn"]): r["ttft_s"] for r in rows if r["agent"] == agent and r["ttft_s"] is not None}

    mine, other = timed(ours), timed(theirs)
    both = mine.keys() & other.keys()
    return ratio(sum(mine[k] for k in both), sum(other[k] for k in both)) if both else math.nan


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.0f} %"


def _secs(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def requests_table(rows: Sequence[Row]) -> str:
    return md_table(
        ["agent", "request", "status", "prompt tok", "reused tok", "reuse", "TTFT s", "total s", "error"],
        [
            [r["agent"], f"{r['session']}#{r['turn']}", r["status"], _count(r["prompt_tokens"]),
             _count(r["cached_tokens"]), _pct(r["reuse"]), _secs(r["ttft_s"]), _secs(r["total_s"]),
             (r["error"] or "")[:60]]
            for r in rows
        ],
    )  # fmt: skip


def totals_table(results: dict[str, Any], phase: str) -> str:
    body = []
    for server, phases in results["servers"].items():
        for agent, t in totals(phases.get(phase, [])).items():
            firsts = ", ".join(f"{s} {_secs(v)}" for s, v in t.first_ttft_s.items())
            body.append([agent, server, t.requests, t.errors, t.prompt_tokens, t.cached_tokens, _pct(t.reuse),
                         _secs(t.ttft_s), firsts, _pct(t.min_later_reuse)])  # fmt: skip
    headers = ["agent", "server", "requests", "errors", "prompt tok", "reused tok", "reuse", "total TTFT s",
               "first-request TTFT s", "min later reuse"]  # fmt: skip
    return md_table(headers, sorted(body, key=lambda row: str(row[0])))


def markdown(results: dict[str, Any]) -> str:
    settings = results.get("settings", {})
    machine = results.get("machine", {})
    parts = [
        "## Agent replay",
        f"`{results.get('command', '')}` on {machine.get('cpu', '?')} ({machine.get('nproc', '?')} cores), "
        f"{machine.get('date_utc', '')}; threads {settings.get('threads')}, window {settings.get('ctx')}, "
        f"llama-server repack {'on' if settings.get('repack') else 'off'}.",
    ]
    rounds = len(next(iter(results.get("repetitions", {}).values()), [None]))
    if rounds > 1:
        parts.append(f"{rounds} rounds, servers in alternating order: each request's median TTFT and total.")
    if settings.get("paced"):
        parts.append("Paced: each request sent after the idle time its agent had before it when recorded.")
    phases = dict.fromkeys(p for phases in results["servers"].values() for p in phases)
    for phase in phases:
        parts += [f"### Totals per agent ({phase})", totals_table(results, phase)]
    rows = targets(results)
    verdicts = md_table(["target", "agent", "value", "verdict"], rows)
    parts += ["### Targets", verdicts if rows else "None: the targets compare llamanode with llama-server."]
    for server, server_phases in results["servers"].items():
        for phase, rows in server_phases.items():
            parts += [f"### {server}, {phase}: every request", requests_table(rows)]
    return "\n\n".join(parts)
