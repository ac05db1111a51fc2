"""bench.server: a multi-turn coding chat through `llamanode serve` vs llama.cpp's llama-server vs
llama-cpp-python's server, all over HTTP with streaming, as an unmodified OpenAI client talks to them.

The chat: a ~4k-token system prompt holding llamanode's own source, then short user turns; each turn
resends the whole history plus the new question (what agents do). Per turn and server: TTFT (request
sent -> first content token, client side) and decode tokens/s (chunks after the first / their time).
The servers run side by side and each turn visits them in alternating order (A,B,C / C,B,A).

Then llamanode's HTTP overhead: the same short warm request over HTTP vs the same library calls in
process (template split, lease, ensure_prefix, prefill_suffix, decode), medians of interleaved runs.

--compare runs llamanode's server at another revision (default 55c71c3, the stdlib http.server one)
and this tree's side by side: HTTP overhead, warm-turn TTFT and a load run (bench/server_compare.py).

    bench/build_llama_server.sh                             # once: ~/.cache/llamanode/llama-server
    .venv/bin/pip install 'llama-cpp-python[server]==0.3.36' # optional: llama-cpp-python's server
    .venv/bin/python -m bench.server                   # -> bench/out/server.md, server.json
    .venv/bin/python -m bench.server --compare         # -> bench/out/server-compare.md, .json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from llamanode import Config
from llamanode.pool import SessionPool
from llamanode.session import default_model_path

from .common import OUT_DIR, machine_info, md_table, stats, verdict, write_json
from .processes import LLAMA_SERVER, Server, free_port, llamanode_serve_cmd, model_id_of
from .prompts import SYSTEM_INTRO, fit_text, source_text
from .raw_loop import repack_decision
from .server_overhead import overhead, overhead_only, overhead_table, paired_diffs

QUESTIONS = (
    "In one sentence: what does KVSession.ensure_prefix return?",
    "Which error does prefill_suffix raise when the context is full?",
    "Name the class that holds stop strings back until they are decided.",
    "What does chunk_sizes avoid, and why?",
    "Which fields make up a ContextManifest digest?",
    "What does DecodeConfig.from_mapping do with unknown keys?",
    "How does the pool pick a workspace to evict?",
    "Which function hashes token ids, and how?",
    "What is SessionState used for?",
    "Where is the BOS policy decided?",
)


CHAT_HEADERS = ["server", "cold TTFT ms", "warm TTFT p50 ms", "warm TTFT p90 ms", "decode tok/s p50"]
CHAT_HEADERS += ["cached tokens (warm turns)"]  # the chat table's columns (also in the --compare report)


@dataclass
class Turn:
    ttft_s: float
    decode_tps: float
    chunks: int
    text: str
    cached_tokens: int | None
    total_s: float


def stream_chat(client: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int, usage: bool) -> Turn:
    body: dict[str, object] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    first: float | None = None
    last = started
    chunks = 0
    parts: list[str] = []
    cached: int | None = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            timings = event.get("timings") or {}
            if "cache_n" in timings:
                cached = int(timings["cache_n"])  # llama-server's count of reused prompt tokens
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    first = now if first is None else first
                    last = now
                    chunks += 1
                    parts.append(text)
            reported = event.get("usage") or {}
            details = reported.get("prompt_tokens_details") or {}
            if "cached_tokens" in details:
                cached = int(details["cached_tokens"])
    done = time.perf_counter()
    ttft = (first if first is not None else done) - started
    tps = (chunks - 1) / (last - first) if first is not None and chunks > 1 and last > first else float("nan")
    return Turn(ttft, tps, chunks, "".join(parts), cached, done - started)


def servers(model: Path, args: argparse.Namespace, store: Path) -> list[Server]:
    threads = str(args.threads)
    found: list[Server] = []
    port = free_port()
    extra = ["--no-warm-next"] if args.no_warm_next else []
    cmd = llamanode_serve_cmd(model, port, args.threads, args.ctx, store, *extra)
    found.append(Server("llamanode", cmd, port, "/health"))
    if LLAMA_SERVER.exists() and not args.skip_llama_server:
        repack = "--repack" if repack_decision().enabled else "--no-repack"  # llamanode's choice (AMX: off)
        for label, fa in (("llama-server (-fa off)", "off"), ("llama-server (-fa auto)", "auto")):
            port = free_port()
            found.append(
                Server(
                    label,
                    [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                     "-c", str(args.ctx), "-t", threads, "-tb", threads, "-np", "1", "-fa", fa, "--jinja",
                     "--no-webui", repack],
                    port,
                    "/health",
                )
            )  # fmt: skip
    if not args.skip_llama_cpp_python and _has_llama_cpp_server():
        port = free_port()
        found.append(
            Server(
                "llama-cpp-python server",
                [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                 "--port", str(port), "--n_ctx", str(args.ctx), "--n_threads", threads, "--n_threads_batch", threads],
                port,
                "/v1/models",
            )
        )  # fmt: skip
    return found


def _has_llama_cpp_server() -> bool:
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return False
    return True


def system_prompt(tokenize: Callable[[str], list[int]], n_tokens: int) -> str:
    """System content such that its rendered system turn is n_tokens tokens."""
    return (
        fit_text(tokenize, lambda b: f"<|im_start|>system\n{SYSTEM_INTRO}{b}<|im_end|>\n", source_text(), n_tokens)
        .removeprefix("<|im_start|>system\n")
        .removesuffix("<|im_end|>\n")
    )


def run_chat(
    found: list[Server], model_ids: dict[str, str], system: str, turns: int, max_tokens: int, think_s: float
) -> dict[str, list[Turn]]:
    results: dict[str, list[Turn]] = {s.name: [] for s in found}
    histories = {s.name: [{"role": "system", "content": system}] for s in found}
    clients = {s.name: httpx.Client(base_url=s.url, timeout=600) for s in found}
    try:
        for t in range(turns):
            order = found if t % 2 == 0 else found[::-1]
            for server in order:
                history = histories[server.name]
                history.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
                usage = not server.name.startswith("llama-cpp-python")  # its server predates stream_options
                turn = stream_chat(clients[server.name], model_ids[server.name], history, max_tokens, usage)
                history.append({"role": "assistant", "content": turn.text})
                results[server.name].append(turn)
                time.sleep(think_s)  # the client reads the answer (or runs a tool) before its next turn
                print(
                    f"  turn {t} {server.name:<26} TTFT {turn.ttft_s * 1000:8.1f} ms"
                    f"  decode {turn.decode_tps:6.1f} tok/s  cached {turn.cached_tokens}",
                    flush=True,
                )
    finally:
        for client in clients.values():
            client.close()
    return results


def report(
    args: argparse.Namespace,
    found: list[Server],
    results: dict[str, list[Turn]],
    http_times: list[float],
    local_times: list[float],
    missing: list[str],
) -> str:
    ms = 1000.0
    rows = []
    for server in found:
        turns = results[server.name]
        warm = turns[1:]
        rows.append(
            [
                server.name,
                turns[0].ttft_s * ms,
                stats([t.ttft_s for t in warm]).median * ms,
                stats([t.ttft_s for t in warm]).p90 * ms,
                stats([t.decode_tps for t in turns if t.decode_tps == t.decode_tps]).median,
                ", ".join(str(t.cached_tokens) for t in warm),
            ]
        )
    per_turn = [[f"turn {i}"] + [results[s.name][i].ttft_s * ms for s in found] for i in range(args.turns)]
    lines = [
        "# llamanode serve vs llama-server vs llama-cpp-python server",
        "",
        f"Command: `.venv/bin/python -m bench.server --turns {args.turns} --context-tokens {args.context_tokens}"
        f" --max-tokens {args.max_tokens} --threads {args.threads} --ctx {args.ctx} --think-s {args.think_s}"
        f"{' --no-warm-next' if args.no_warm_next else ''}`",
        "",
        f"Machine: {json.dumps(machine_info())}",
        "",
        f"A {args.context_tokens}-token system prompt (llamanode's source), then {args.turns - 1} short user turns; "
        f"every request resends the whole history (stream, temperature 0, max_tokens {args.max_tokens}). "
        f"Turn 0 is cold. After each answer the client pauses {args.think_s} s (every server alike). TTFT is "
        "client-side (request sent -> first content token). llamanode gets no workspace header: it routes by "
        "prefix, as an unmodified OpenAI client would; with warm-next on (its default) it prefills each answer "
        "during that pause.",
        "",
        md_table(CHAT_HEADERS, rows),
        "",
        "Per turn TTFT (ms):",
        "",
        md_table(["turn", *[s.name for s in found]], per_turn),
    ]
    target_rows = []
    ref = next((s for s in found if s.name.startswith("llama-server")), None)
    if ref is not None:
        ours = stats([t.ttft_s for t in results["llamanode"][1:]]).median
        for s in found:
            if s.name.startswith("llama-server"):
                theirs = stats([t.ttft_s for t in results[s.name][1:]]).median
                target_rows.append([f"warm TTFT p50 <= {s.name}", ours * ms, theirs * ms, verdict(ours <= theirs)])
    if http_times:
        over = stats(paired_diffs(http_times, local_times)).median * ms
        target_rows.append(["HTTP overhead p50 <= 5 ms (paired)", over, 5.0, verdict(over <= 5.0)])
        lines += [
            "",
            f"HTTP overhead: one short warm chat request (max_tokens 1, workspace header), {len(http_times)} pairs "
            "of (HTTP, the same library calls in process) back to back, one thread each; overhead = median of the "
            "paired differences.",
            "",
            overhead_table(http_times, local_times),
        ]
    if target_rows:
        lines += ["", "Targets:", "", md_table(["target", "llamanode", "reference", "verdict"], target_rows)]
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing)]
    answers = {s.name: results[s.name][0].text[:80] for s in found}
    lines += ["", "Turn 0 answers (first 80 chars):", "", md_table(["server", "answer"], list(answers.items()))]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=8, help="turns per server, the first one cold")
    parser.add_argument("--context-tokens", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--think-s", type=float, default=2.0, help="client pause after each answer (all servers)")
    parser.add_argument("--overhead-reps", type=int, default=60)
    parser.add_argument("--no-warm-next", action="store_true", help="pass --no-warm-next to llamanode serve")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "server.md")
    parser.add_argument("--overhead-only", action="store_true", help="only the HTTP overhead (-> server-overhead.md)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="llamanode before (--compare-rev) and after: overhead, warm TTFT, load (-> server-compare.md)",
    )
    parser.add_argument("--compare-rev", default="55c71c3", help="the 'before' revision (default: %(default)s)")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--load-clients", type=int, default=16)
    parser.add_argument("--load-workspaces", type=int, default=4)
    parser.add_argument("--load-max-tokens", type=int, default=16)
    args = parser.parse_args()
    if args.overhead_only:
        return overhead_only(args)
    if args.compare:
        from .server_compare import compare

        return compare(args)

    model = default_model_path()
    missing: list[str] = []
    if not LLAMA_SERVER.exists():
        missing.append(f"llama-server ({LLAMA_SERVER} not built: run bench/build_llama_server.sh)")
    if not _has_llama_cpp_server():
        missing.append("llama-cpp-python server (pip install 'llama-cpp-python[server]==0.3.36' failed or not done)")
    work = Path(tempfile.mkdtemp(prefix="llamanode-bench-server-"))
    found = servers(model, args, work / "store")
    try:
        for server in found:
            print(f"starting {server.name} ...", flush=True)
            server.start(work)
        model_ids = {s.name: model_id_of(s) for s in found}
        tokenizer = SessionPool(str(model), Config(num_ctx=256, num_threads=1), store_dir=work / "tok")
        try:
            system = system_prompt(tokenizer.tokenize, args.context_tokens)
        finally:
            tokenizer.close()
        print(f"chat: {args.turns} turns over a {args.context_tokens}-token system prompt", flush=True)
        results = run_chat(found, model_ids, system, args.turns, args.max_tokens, args.think_s)
        print("HTTP overhead ...", flush=True)
    finally:
        for server in found:
            server.stop()
    try:
        http_times, local_times = overhead(model, args, args.overhead_reps, work)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"overhead measurement failed: {exc}", flush=True)
        http_times, local_times = [], []
    text = report(args, found, results, http_times, local_times, missing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    write_json(
        args.out.with_suffix(".json"),
        {
            "machine": machine_info(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "turns": {name: [t.__dict__ for t in turns] for name, turns in results.items()},
            "overhead_http_s": http_times,
            "overhead_in_process_s": local_times,
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
