"""llamanode's HTTP overhead: one short warm chat request over HTTP vs the same library calls in process.

Used by `python -m bench.server` (one server; --overhead-only) and its --compare (two revisions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from llamanode import Config, DecodeConfig
from llamanode.chat import ChatMessage, ChatTemplate, discover_special_tokens
from llamanode.pool import SessionPool
from llamanode.server.schemas import WORKSPACE_HEADER
from llamanode.session import default_model_path

from .common import machine_info, md_table, stats, verdict
from .processes import Server, free_port, llamanode_serve_cmd, model_id_of

__all__ = ["overhead", "overhead_only", "overhead_table", "paired_diffs", "paired_overhead", "pcts", "template_of"]


def overhead(model: Path, args: argparse.Namespace, reps: int, work: Path) -> tuple[list[float], list[float]]:
    """One short warm request (max_tokens 1): HTTP vs the same calls in process, back to back.

    A dedicated llamanode server and the in-process pool both use one thread (so the two never
    fight over spinning llama.cpp threads); the pairs alternate their order. The server runs with
    --no-warm-next: warming the next turn after each answer is extra work after the response (the
    chat benchmark measures it), not part of serving this request.
    """
    port = free_port()
    cmd = llamanode_serve_cmd(model, port, 1, 2048, work / "store-overhead", "--no-warm-next")
    server = Server("llamanode-overhead", cmd, port, "/health")
    server.start(work)
    try:
        return paired_overhead({server.name: server.url}, model, model_id_of(server), reps, work)[server.name]
    finally:
        server.stop()


def paired_overhead(
    urls: dict[str, str], model: Path, model_id: str, reps: int, work: Path
) -> dict[str, tuple[list[float], list[float]]]:
    """{server: (HTTP seconds, paired in-process seconds)} for one short warm chat request."""
    messages = [
        {"role": "system", "content": "You are a terse coding assistant."},
        {"role": "user", "content": "Say ok."},
    ]
    body = {"model": model_id, "messages": messages, "max_tokens": 1, "temperature": 0}
    pool = SessionPool(str(model), Config(num_ctx=2048, num_threads=1), store_dir=work / "store-inproc")
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
    try:
        template = template_of(pool)
        chat = [ChatMessage(m["role"], m["content"]) for m in messages]
        config = DecodeConfig(max_tokens=1)

        def in_process() -> float:
            started = time.perf_counter()
            split = template.split(chat)
            with pool.session("overhead") as session:
                session.ensure_prefix(session.prefix((("chat", split.prefix),)))
                session.prefill_suffix(session.suffix(split.suffix))
                for _ in session.decode(config):
                    pass
            return time.perf_counter() - started

        def over_http(name: str) -> float:
            started = time.perf_counter()
            clients[name].post(
                "/v1/chat/completions", json=body, headers={WORKSPACE_HEADER: "overhead"}
            ).raise_for_status()
            return time.perf_counter() - started

        for _ in range(5):  # warm every path
            for name in urls:
                over_http(name)
            in_process()
        out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in urls}
        names = list(urls)
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                http_times, local_times = out[name]
                if rep % 2 == 0:
                    http_times.append(over_http(name))
                    local_times.append(in_process())
                else:
                    local_times.append(in_process())
                    http_times.append(over_http(name))
        return out
    finally:
        for client in clients.values():
            client.close()
        pool.close()


def template_of(pool: SessionPool) -> ChatTemplate:
    """The model's own chat template, with its ChatML markers as special tokens."""
    with pool.session("template-probe") as session:
        source = session.identity.chat_template
    specials = discover_special_tokens(source or "", pool.tokenize, ("<|im_start|>", "<|im_end|>"))
    return ChatTemplate(source, special_tokens=specials)


def pcts(samples: list[float]) -> tuple[float, float, float]:
    s = stats(samples)
    return s.median, s.p10, s.p90


def paired_diffs(http_times: list[float], local_times: list[float]) -> list[float]:
    return [h - loc for h, loc in zip(http_times, local_times, strict=True)]


def overhead_table(http_times: list[float], local_times: list[float]) -> str:
    """Percentiles (ms) of the HTTP path, the in-process path and their paired differences."""
    rows = [
        ("HTTP (llamanode serve)", http_times),
        ("in process (SessionPool + ChatTemplate)", local_times),
        ("paired difference", paired_diffs(http_times, local_times)),
    ]
    return md_table(
        ["path", "p50 ms", "p10 ms", "p90 ms"], [[name, *(v * 1000.0 for v in pcts(t))] for name, t in rows]
    )


def overhead_only(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="llamanode-bench-overhead-"))
    try:
        http_times, local_times = overhead(default_model_path(), args, args.overhead_reps, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    diffs = paired_diffs(http_times, local_times)
    ms = 1000.0
    text = "\n".join(
        [
            "# llamanode serve: HTTP overhead vs the in-process call",
            "",
            f"Command: `.venv/bin/python -m bench.server --overhead-only --overhead-reps {args.overhead_reps}`",
            "",
            f"Machine: {json.dumps(machine_info())}",
            "",
            f"One short warm chat request (max_tokens 1, workspace header), {len(diffs)} pairs of (HTTP, the same "
            "library calls in process) back to back, one thread each, server with --no-warm-next; "
            "overhead = median of the paired differences.",
            "",
            overhead_table(http_times, local_times),
            "",
            f"HTTP overhead p50 <= 5 ms: {verdict(stats(diffs).median * ms <= 5.0)}",
        ]
    )
    out = args.out.with_name("server-overhead.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0
