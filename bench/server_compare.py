"""`bench/server.py --compare`: the HTTP server before and after a change, side by side in one run.

The "before" server is another revision of llamanode (default: 55c71c3, the last one on the
stdlib http.server), checked out into a temporary git worktree and run with its src/ first on
PYTHONPATH; the "after" server is this tree. Both use the same venv, model and flags.

- HTTP overhead: one short warm chat request (max_tokens 1, workspace header) to each server, each
  paired with the same library calls in process right before or after it (order alternating); per
  server, percentiles of the paired differences. Servers run with --no-warm-next and one thread.
- Warm-turn TTFT: a multi-turn streamed chat over a long system prompt, each turn visiting the
  servers in alternating order (bench.server.run_chat).
- Load: N clients over W workspaces for a bounded time, streamed chat turns; throughput, TTFT
  p50/p99, 429 refusals (retried after a pause) and every other error (there should be none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llamanode import Config
from llamanode.pool import SessionPool
from llamanode.server.schemas import WORKSPACE_HEADER

from .common import REPO, machine_info, md_table, stats, write_json
from .server import CHAT_HEADERS, run_chat, system_prompt
from .server_overhead import paired_diffs, paired_overhead

__all__ = ["LoadResult", "compare", "load_run", "revision_tree", "serve_cmd"]


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """A temporary git worktree of rev (removed afterwards); run it with PYTHONPATH=<tree>/src."""
    parent = Path(tempfile.mkdtemp(prefix="llamanode-rev-"))
    tree = parent / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def revision_env(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m llamanode.cli` import the revision in tree, checked."""
    env = {"PYTHONPATH": str(tree / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    found = subprocess.run(
        [sys.executable, "-c", "import llamanode; print(llamanode.__file__)"],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(found).is_relative_to(tree):
        raise RuntimeError(f"PYTHONPATH did not select the revision: llamanode imported from {found}")
    return env


def serve_cmd(model: Path, port: int, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llamanode.cli", "serve", "--port", str(port), "--model", str(model),
            "--store-dir", str(store), "--quiet", *extra]  # fmt: skip


@dataclass
class LoadResult:
    seconds: float
    clients: int
    workspaces: int
    ok: int = 0
    refused_429: int = 0
    other_errors: Counter[str] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0

    def row(self, name: str) -> list[object]:
        ttft = stats(self.ttft_s)
        return [
            name,
            self.ok,
            self.ok / self.seconds,
            self.completion_tokens / self.seconds,
            ttft.median * 1000,
            ttft.p99 * 1000,
            self.refused_429,
            sum(self.other_errors.values()),
        ]


def load_run(url: str, model_id: str, seconds: float, clients: int, workspaces: int, max_tokens: int) -> LoadResult:
    """clients threads over workspaces, alternating two chat turns per client, for `seconds`."""
    result = LoadResult(seconds, clients, workspaces)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def turns(topic: int) -> list[list[dict[str, str]]]:
        system = {"role": "system", "content": f"You are a terse coding assistant for module {topic}."}
        first = {"role": "user", "content": f"Write a function that sums list number {topic}."}
        return [[system, first], [system, first, {"role": "assistant", "content": "def f(xs): ..."},
                                  {"role": "user", "content": "Add a docstring."}]]  # fmt: skip

    def client_loop(index: int) -> None:
        workspace = index % workspaces
        convo = turns(workspace)
        with httpx.Client(base_url=url, timeout=300) as http:
            turn = index % 2
            while time.monotonic() < deadline:
                outcome = _one_turn(http, model_id, convo[turn], f"load-{workspace}", max_tokens)
                with lock:
                    if isinstance(outcome, tuple):
                        result.ok += 1
                        result.ttft_s.append(outcome[0])
                        result.completion_tokens += outcome[1]
                    elif outcome == "429":
                        result.refused_429 += 1
                    else:
                        result.other_errors[outcome] += 1
                if outcome == "429":
                    time.sleep(0.2)
                turn = 1 - turn

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 600)
    result.seconds = time.monotonic() - started
    return result


def _one_turn(
    http: httpx.Client, model_id: str, messages: list[dict[str, str]], workspace: str, max_tokens: int
) -> tuple[float, int] | str:
    """(TTFT, completion tokens), "429", or a name for any other failure."""
    body = {"model": model_id, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        with http.stream("POST", "/v1/chat/completions", json=body, headers={WORKSPACE_HEADER: workspace}) as r:
            if r.status_code != 200:
                r.read()
                return "429" if r.status_code == 429 else f"status {r.status_code}"
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return f"error event {event['error'].get('code')}"
                if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                    first = time.perf_counter()
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return ((first or time.perf_counter()) - started, tokens)


def compare(args: argparse.Namespace) -> int:
    """Overhead, warm-turn TTFT and load for the server at args.compare_rev and this tree's."""
    from llamanode.session import default_model_path

    from .processes import Server, free_port, model_id_of

    model = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="llamanode-bench-compare-"))
    try:
        with revision_tree(args.compare_rev) as tree:
            revisions = {f"before ({args.compare_rev})": revision_env(tree), "after (this tree)": {}}

            def servers(tag: str, *flags: str) -> list[Server]:
                found = []
                for index, (name, env) in enumerate(revisions.items()):
                    port = free_port()
                    cmd = serve_cmd(model, port, work / f"store-{tag}-{index}", *flags)
                    found.append(Server(name, cmd, port, "/health", env=env))
                return found

            print("HTTP overhead ...", flush=True)
            with running(servers("overhead", "--ctx", "2048", "--threads", "1", "--parallel", "1", "--no-warm-next"),
                         work) as pair:  # fmt: skip
                urls = {s.name: s.url for s in pair}
                overhead = paired_overhead(urls, model, model_id_of(pair[0]), args.overhead_reps, work)
            print("warm-turn TTFT ...", flush=True)
            chat_flags = ("--ctx", str(args.ctx), "--threads", str(args.threads), "--parallel", "1")
            with running(servers("chat", *chat_flags), work) as pair:
                tokenizer = SessionPool(str(model), Config(num_ctx=256, num_threads=1), store_dir=work / "tok")
                try:
                    system = system_prompt(tokenizer.tokenize, args.context_tokens)
                finally:
                    tokenizer.close()
                ids = {s.name: model_id_of(s) for s in pair}
                turns = run_chat(pair, ids, system, args.turns, args.max_tokens, args.think_s)
            loads: dict[str, LoadResult] = {}
            load_flags = ("--ctx", "2048", "--threads", "1", "--parallel", "2", "--max-queue", "16")
            for server in servers("load", *load_flags):
                print(f"load: {server.name} ...", flush=True)
                with running([server], work):
                    loads[server.name] = load_run(
                        server.url, model_id_of(server), args.load_seconds, args.load_clients,
                        args.load_workspaces, args.load_max_tokens,
                    )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = compare_report(args, overhead, turns, loads)
    out = args.out.with_name("server-compare.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    write_json(
        out.with_suffix(".json"),
        {
            "machine": machine_info(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "overhead": {name: {"http_s": h, "in_process_s": loc} for name, (h, loc) in overhead.items()},
            "turns": {name: [t.__dict__ for t in ts] for name, ts in turns.items()},
            "load": {name: {**r.__dict__, "other_errors": dict(r.other_errors)} for name, r in loads.items()},
        },
    )
    print(text)
    return 0


@contextlib.contextmanager
def running(servers: list[Any], work: Path) -> Iterator[list[Any]]:
    try:
        for server in servers:
            print(f"  starting {server.name} ...", flush=True)
            server.start(work)
        yield servers
    finally:
        for server in servers:
            server.stop()


def compare_report(
    args: argparse.Namespace,
    overhead: dict[str, tuple[list[float], list[float]]],
    turns: dict[str, list[Any]],
    loads: dict[str, LoadResult],
) -> str:
    ms = 1000.0
    overhead_rows = []
    for name, (http_times, local_times) in overhead.items():
        diffs = stats(paired_diffs(http_times, local_times))
        http, local = stats(http_times), stats(local_times)
        overhead_rows.append(
            [name, http.median * ms, http.p99 * ms, local.median * ms, diffs.median * ms, diffs.p99 * ms]
        )
    ttft_rows = []
    for name, results in turns.items():
        warm = stats([t.ttft_s for t in results[1:]])
        decode = stats([t.decode_tps for t in results if t.decode_tps == t.decode_tps])
        cached = ", ".join(str(t.cached_tokens) for t in results[1:])
        ttft_rows.append([name, results[0].ttft_s * ms, warm.median * ms, warm.p90 * ms, decode.median, cached])
    errors = {name: dict(r.other_errors) for name, r in loads.items() if r.other_errors}
    first = next(iter(loads.values()))
    command = (
        f".venv/bin/python -m bench.server --compare --compare-rev {args.compare_rev} --overhead-reps "
        f"{args.overhead_reps} --turns {args.turns} --context-tokens {args.context_tokens} --max-tokens "
        f"{args.max_tokens} --threads {args.threads} --ctx {args.ctx} --think-s {args.think_s} --load-seconds "
        f"{args.load_seconds} --load-clients {args.load_clients} --load-workspaces {args.load_workspaces} "
        f"--load-max-tokens {args.load_max_tokens}"
    )
    lines = [
        "# llamanode serve: before and after, side by side",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {json.dumps(machine_info())}",
        "",
        f"HTTP overhead: one short warm chat request (max_tokens 1, workspace header), {args.overhead_reps} pairs per "
        "server of (HTTP, the same library calls in process) back to back, servers with --no-warm-next and one "
        "thread; overhead = the paired differences.",
        "",
        md_table(
            ["server", "HTTP p50 ms", "HTTP p99 ms", "in process p50 ms", "overhead p50 ms", "overhead p99 ms"],
            overhead_rows,
        ),
        "",
        f"Warm-turn TTFT: a {args.context_tokens}-token system prompt, then {args.turns - 1} short user turns "
        f"(streamed, max_tokens {args.max_tokens}, turn 0 cold, {args.think_s} s pause after each answer).",
        "",
        md_table(CHAT_HEADERS, ttft_rows),
        "",
        f"Load: {first.clients} clients over {first.workspaces} workspaces for {args.load_seconds:g} s (streamed chat "
        f"turns, max_tokens {args.load_max_tokens}; --parallel 2 --max-queue 16, one thread each; a 429 is retried "
        "after 0.2 s).",
        "",
        md_table(
            ["server", "answers", "answers/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "429s", "other errors"],
            [r.row(name) for name, r in loads.items()],
        ),
    ]
    if errors:
        lines += ["", f"Other errors: {json.dumps(errors)}"]
    return "\n".join(lines) + "\n"
