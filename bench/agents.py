"""bench.agents: replay recorded coding-agent sessions against llamanode and llama-server, one server at a time.

Input: recordings of bench/agent_proxy.py (bench/agent_scenarios.py writes one per agent). Every generation
request (`/v1/messages`, `/v1/responses`, `/v1/chat/completions`) is sent again exactly as it was forwarded,
back to back (with --pace: each after the idle time its agent had before it when recorded, its tool runs and
its own work), in recorded order, streaming; other requests (`HEAD /`, count_tokens) are not replayed. A chat
stream without `stream_options.include_usage` gets it, on every server alike, so each reports its usage.

Per server, in one run: a fresh process replays each agent's requests in turn (phase "sequential"), then a
fresh process replays two agents' requests interleaved one by one (phase "interleaved": every request is a
switch of workspace, which should cost a switch, not a re-prefill). With --restart, a third phase replays the
first session of every agent that has several, stops the server (SIGTERM: llamanode writes its workspaces to
its store) and starts it again, llamanode on the same store, then replays the later sessions: an agent's next
session after the server restarted (llama-server keeps nothing across a restart; its slot files need a client
that saves and restores them, which no agent does). Servers get the same threads and window:
llamanode `serve --ctx W`, llama-server `--jinja -fa off -np 1 -c W` with YaRN beyond the training window,
and `--no-repack` when llamanode's repack decision is off (`--repack`, default: read from `llamanode info`).

Per request: prompt tokens and reused tokens from each server's usage (Anthropic `cache_read_input_tokens`,
OpenAI `cached_tokens`; llama-server also sends `timings.cache_n`), TTFT (request sent to the first streamed
content event, client side) and total time. Targets (PASS/MISS): every request after a session's first
reuses >= 90 % of its prompt on llamanode; llamanode's total TTFT <= 0.9 x llama-server's per agent; a second
session's first request at least as fast as on llama-server; with --restart, the later sessions' total TTFT
after the restart <= 0.9 x llama-server's. With --repeat N every server replays N times,
their order reversed every other round (against drift on a noisy machine), and each request's TTFT and total
are the medians of its N replays.

    .venv/bin/python -m bench.agent_scenarios --serve llamanode            # record once
    .venv/bin/python -m bench.agents bench/out/agents/<run>          # -> bench/out/agents.{json,md}
    .venv/bin/python -m bench.agents --print-md bench/out/agents.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from .agent_report import markdown
from .agent_wire import Api, ReplyObserver, api_of, read_recording
from .common import OUT_DIR, log, machine_info, now, write_json
from .processes import LLAMA_SERVER, Server, free_port, llama_server_cmd, llamanode_serve_cmd

SERVERS = ("llamanode", "llama-server")
Phases = dict[str, list[dict[str, Any]]]  # phase (sequential, interleaved) -> one row per request
NOT_RESENT = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"})


@dataclass(frozen=True)
class Recorded:
    """One generation request from a recording, with its place in the agent's sessions."""

    agent: str
    session: str  # "s1", "s2", ... in order of first appearance within the agent's recording
    turn: int  # 1 for a session's first request
    api: Api
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    idle_s: float = 0.0  # the agent's own time before it (since the previous generation request's end), recorded


@dataclass
class Replayed:
    """One replayed request; status 0 when the connection failed."""

    agent: str
    session: str
    turn: int
    api: str
    status: int
    prompt_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    usage_source: str | None
    ttft_s: float | None
    total_s: float
    error: str | None

    @property
    def reuse(self) -> float | None:
        if self.prompt_tokens and self.cached_tokens is not None:
            return self.cached_tokens / self.prompt_tokens
        return None


def load_agent(path: Path, per_session: int | None, without_tools: bool = False) -> list[Recorded]:
    """The generation requests of one recording, sessions renamed s1, s2, ... in order of appearance; at most
    `per_session` requests of each session (every session keeps its first); without_tools: their tool
    definitions left out (so servers that render tools differently prefill the same prompt)."""
    names: dict[str, str] = {}
    turns: dict[str, int] = {}
    out: list[Recorded] = []
    previous_end: float | None = None
    for record in read_recording(path):
        api = api_of(record["path"])
        if api == "other" or record["method"] != "POST" or not isinstance(record.get("body"), dict):
            continue
        idle, previous_end = _idle_before(record, previous_end)
        key = str(record.get("session"))
        session = names.setdefault(key, f"s{len(names) + 1}")
        turns[session] = turns.get(session, 0) + 1
        headers = {k: v for k, v in record["headers"].items() if k not in NOT_RESENT}
        body = _with_usage(api, record["body"])
        if without_tools:
            body = {k: v for k, v in body.items() if k not in TOOL_FIELDS}
        out.append(Recorded(record.get("label") or path.stem, session, turns[session], api, record["path"], headers,
                            body, idle))  # fmt: skip
    return [r for r in out if r.turn <= per_session] if per_session else out


TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def _idle_before(record: dict[str, Any], previous_end: float | None) -> tuple[float, float | None]:
    """(the agent's idle time before this request, this request's end), from the recorded clock; 0 if unknown."""
    arrival, total = record.get("arrival_s"), record.get("total_s")
    if not isinstance(arrival, (int, float)) or not isinstance(total, (int, float)):
        return 0.0, None
    idle = 0.0 if previous_end is None else max(0.0, arrival - previous_end)
    return idle, arrival + total


def _with_usage(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    if api == "chat" and body.get("stream") and not (body.get("stream_options") or {}).get("include_usage"):
        return {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    return body


def interleave(a: list[Recorded], b: list[Recorded]) -> list[Recorded]:
    """a1, b1, a2, b2, ...: two agents taking turns on one server."""
    out: list[Recorded] = []
    for i in range(max(len(a), len(b))):
        out += [seq[i] for seq in (a, b) if i < len(seq)]
    return out


def replay(client: httpx.Client, request: Recorded) -> Replayed:
    observer = ReplyObserver(request.api, bool(request.body.get("stream")))
    started = now()
    with client.stream("POST", request.path, json=request.body, headers=request.headers) as response:
        observer.streaming = observer.streaming and "text/event-stream" in response.headers.get("content-type", "")
        for chunk in response.iter_raw():
            observer.feed(chunk, now() - started)
        status = response.status_code
    total = now() - started
    reply = observer.finish(total)
    if status >= 400 and reply.error is None:
        reply.error = f"HTTP {status}"
    return Replayed(request.agent, request.session, request.turn, request.api, status, reply.prompt_tokens,
                    reply.cached_tokens, reply.output_tokens, reply.usage_source, reply.first_content_s, total,
                    reply.error)  # fmt: skip


def replay_all(url: str, requests: list[Recorded], server: str, phase: str, pace: bool = False) -> list[Replayed]:
    """Every request in turn; pace: each after its agent's recorded idle time (the first at once)."""
    out: list[Replayed] = []
    for i, request in enumerate(requests, 1):
        if pace and i > 1:
            time.sleep(request.idle_s)
        # a connection per request: llama-server may close a kept-alive one after a stream, and a request
        # that meets a closed connection would fail (connecting costs ~1 ms, inside TTFT for every server)
        with httpx.Client(base_url=url, timeout=httpx.Timeout(None, connect=10.0)) as client:
            try:
                result = replay(client, request)
            except httpx.TransportError as exc:  # recorded as status 0; the run goes on
                result = Replayed(request.agent, request.session, request.turn, request.api, 0, None, None, None,
                                  None, None, 0.0, repr(exc))  # fmt: skip
            ttft = "n/a" if result.ttft_s is None else f"{result.ttft_s:.2f} s"
            where = f"{server} {phase} {i}/{len(requests)} {request.agent} {request.session}#{request.turn}"
            log(
                f"{where}: HTTP {result.status}, prompt {result.prompt_tokens}, "
                f"cached {result.cached_tokens}, TTFT {ttft}"
            )
            out.append(result)
    return out


# -- servers ---------------------------------------------------------------------------------------


def repack_decision(choice: str) -> bool:
    """--repack on/off, or auto: what `llamanode info` says (llama.cpp's default, on, when it says nothing)."""
    if choice != "auto":
        return choice == "on"
    info = subprocess.run([sys.executable, "-m", "llamanode.cli", "info"], capture_output=True, text=True, check=False)
    found = re.search(r"repack\W+(true|false|on|off|yes|no)\b", info.stdout, re.IGNORECASE)
    if found is None:
        log("llamanode info says nothing about repacking: llama-server keeps its default (repack on)")
        return True
    return found.group(1).lower() in ("true", "on", "yes")


@contextmanager
def started(
    kind: str, args: argparse.Namespace, aliases: list[str], log_dir: Path, store: Path | None = None
) -> Iterator[str]:
    """A fresh server process, stopped on exit (SIGTERM); llamanode's store is `store`, or a new empty one."""
    from llamanode import default_model_path

    model = default_model_path()
    port = free_port()
    with contextlib.ExitStack() as stack:
        if store is None:
            store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-agents-store-")))
        if kind == "llamanode":
            alias_flags = [flag for name in aliases for flag in ("--alias", name)]
            cmd = llamanode_serve_cmd(model, port, args.threads, args.ctx, store, *alias_flags)
        else:
            cmd = llama_server_cmd(model, port, args.threads, args.ctx, repack=args.repack_on)
        with Server(kind, cmd, port, "/health") as server:
            server.start(log_dir, timeout=600)
            yield server.url


def run_server(
    kind: str, args: argparse.Namespace, agents: dict[str, list[Recorded]], pair: list[str], log_dir: Path
) -> Phases:
    aliases = sorted({str(r.body.get("model")) for seq in agents.values() for r in seq if r.body.get("model")})
    phases: dict[str, list[Replayed]] = {"sequential": []}
    with started(kind, args, aliases, log_dir) as url:
        for name, seq in agents.items():
            phases["sequential"] += replay_all(url, seq, kind, f"sequential/{name}", args.pace)
    if len(pair) == 2:
        with started(kind, args, aliases, log_dir) as url:
            both = interleave(agents[pair[0]], agents[pair[1]])
            phases["interleaved"] = replay_all(url, both, kind, "interleaved", args.pace)
    before, after = split_at_restart(agents)
    if args.restart and after:
        with tempfile.TemporaryDirectory(prefix="bench-agents-restart-") as store:
            with started(kind, args, aliases, log_dir, Path(store)) as url:
                phases["restart"] = replay_all(url, before, kind, "restart/before", args.pace)
            with started(kind, args, aliases, log_dir, Path(store)) as url:
                phases["restart"] += replay_all(url, after, kind, "restart/after", args.pace)
    return {phase: [{**asdict(r), "reuse": r.reuse} for r in results] for phase, results in phases.items()}


def split_at_restart(agents: dict[str, list[Recorded]]) -> tuple[list[Recorded], list[Recorded]]:
    """(first sessions, later sessions) of the agents that have more than one session, each in recorded order."""
    several = [seq for seq in agents.values() if any(r.session != "s1" for r in seq)]
    first = [r for seq in several for r in seq if r.session == "s1"]
    later = [r for seq in several for r in seq if r.session != "s1"]
    return first, later


def repeated(servers: list[str], times: int, run: Callable[[str], Phases]) -> dict[str, list[Phases]]:
    """Every server's results, `times` times, the servers' order reversed every other time (against drift)."""
    out: dict[str, list[Phases]] = {kind: [] for kind in servers}
    for rep in range(times):
        for kind in servers if rep % 2 == 0 else servers[::-1]:
            out[kind].append(run(kind))
    return out


def median_phases(reps: list[Phases]) -> Phases:
    """The first repetition's rows with each request's median TTFT and total over every repetition."""
    merged: Phases = {}
    for phase, rows in reps[0].items():
        merged[phase] = []
        for i, row in enumerate(rows):
            same = [rep[phase][i] for rep in reps]
            ttfts = [r["ttft_s"] for r in same if r["ttft_s"] is not None]
            ttft = statistics.median(ttfts) if len(ttfts) == len(same) else None
            merged[phase].append({**row, "ttft_s": ttft, "total_s": statistics.median(r["total_s"] for r in same)})
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("recordings", nargs="*", type=Path, help="agent_proxy recordings (files or directories)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, replayed in this order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=32768, help="window on both servers (YaRN beyond 8192)")
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto", help="llama-server's repacking")
    parser.add_argument("--interleave", default="claude,codex", help="two agents interleaved on one server ('' = skip)")
    parser.add_argument("--per-session", type=int, default=None, help="replay at most N requests of each session")
    parser.add_argument(
        "--without-tools", action="store_true", help="leave tool definitions out of every request (same prompts)"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="also replay later sessions after a server restart (llamanode: same store)",
    )
    parser.add_argument(
        "--pace",
        action="store_true",
        help="wait each agent's recorded idle time (tool runs, its own work) before its next request",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="replay N times, servers in alternating order; report median TTFTs"
    )
    parser.add_argument("--json", type=Path, default=OUT_DIR / "agents.json", help="results file")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: --json with .md)")
    parser.add_argument("--print-md", type=Path, default=None, help="only print the report of a results file")
    return parser.parse_args(argv)


def recording_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_md is not None:
        print(markdown(json.loads(args.print_md.read_text())))
        return 0
    files = recording_files(args.recordings)
    if not files:
        sys.exit("no recordings given (bench/agent_scenarios.py writes them)")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "llama-server" in servers and not LLAMA_SERVER.exists():
        sys.exit(f"{LLAMA_SERVER} not built: run bench/build_llama_server.sh")
    args.repack_on = repack_decision(args.repack)
    agents = {f.stem: load_agent(f, args.per_session, args.without_tools) for f in files}
    pair = [a for a in args.interleave.split(",") if a in agents] if args.interleave else []
    log_dir = args.json.parent / "agents-logs"
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.agents", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "settings": {
            "threads": args.threads,
            "ctx": args.ctx,
            "repack": args.repack_on,
            "interleaved": pair,
            "without_tools": args.without_tools,
            "restart": args.restart,
            "paced": args.pace,
        },
        "recordings": {f.stem: str(f) for f in files},
        "repetitions": repeated(servers, args.repeat, lambda kind: run_server(kind, args, agents, pair, log_dir)),
    }
    results["servers"] = {kind: median_phases(reps) for kind, reps in results["repetitions"].items()}
    write_json(args.json, results)
    report = markdown(results)
    (args.out or args.json.with_suffix(".md")).write_text(report + "\n", encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
