"""Concurrency (no cross-talk, only documented refusals) and client disconnects mid-stream."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from test_server_support import MODEL, ServerProcess, chat, conversation, server

__all__ = ["server"]

TOPICS = ("sum", "mean", "mode")
LOAD_SECONDS = float(os.environ.get("LLAMANODE_LOAD_SECONDS", "12"))


def _turns(topic: str) -> list[list[dict[str, str]]]:
    convo = conversation(topic)
    return [convo[:2], convo]


def test_clients_by_workspaces_concurrently_without_cross_talk(server: ServerProcess) -> None:
    _run_load(server, LOAD_SECONDS)


def _run_load(server: ServerProcess, seconds: float) -> None:
    """3 clients on each of 3 workspaces, alternating two turns, for a bounded time.

    Every answer must equal that turn's cold answer (computed first, on fresh workspaces);
    the only errors allowed are the documented 429 refusals.
    """
    cold = {
        (topic, turn): chat(server, messages, workspace=f"cold-{topic}-{turn}", max_tokens=12)
        .choices[0]
        .message.content
        for topic in TOPICS
        for turn, messages in enumerate(_turns(topic))
    }
    outcomes: Counter[str] = Counter()
    mismatches: list[tuple[str, int, str, str]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(topic: str, index: int) -> None:
        turn = index % 2
        while time.monotonic() < deadline:
            try:
                answer = chat(server, _turns(topic)[turn], workspace=f"load-{topic}", max_tokens=12)
            except openai.RateLimitError:
                with lock:
                    outcomes["429"] += 1
                time.sleep(0.2)
                continue
            text = answer.choices[0].message.content
            with lock:
                outcomes["ok"] += 1
                if text != cold[(topic, turn)]:
                    mismatches.append((topic, turn, text, cold[(topic, turn)]))
            turn = 1 - turn

    threads = [threading.Thread(target=client_loop, args=(t, i)) for t in TOPICS for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 180)
    assert not any(t.is_alive() for t in threads)
    assert not mismatches, mismatches[:3]
    assert outcomes["ok"] >= len(TOPICS), outcomes
    assert set(outcomes) <= {"ok", "429"}
    logs = [
        line for line in server.request_logs("/v1/chat/completions") if str(line.get("workspace")).startswith("load-")
    ]
    assert {line["status"] for line in logs} <= {200, 429}
    assert any(line.get("reused_tokens", 0) > 0 for line in logs)


def _raw_stream(server: ServerProcess, body: dict[str, Any], workspace: str) -> socket.socket:
    """Open a streaming request on a raw socket, so the test can vanish mid-stream."""
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=60)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"X-Llamanode-Workspace: {workspace}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def test_disconnect_mid_stream_cancels_the_decode_and_frees_the_workspace(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1500, "temperature": 0, "stream": True}
    sock = _raw_stream(server, body, "dc-ws")
    received = b""
    while received.count(b"data: ") < 3:
        chunk = sock.recv(4096)
        assert chunk, "server closed the stream early"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()
    started = time.monotonic()
    follow = chat(server, [{"role": "user", "content": "Say ok."}], workspace="dc-ws", max_tokens=4)
    assert follow.choices[0].message.content is not None
    assert time.monotonic() - started < 10  # 1500 tokens would take far longer: the decode was cancelled
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cancelled = [line for line in server.request_logs("/v1/completions") if line.get("workspace") == "dc-ws"]
        if cancelled:
            break
        time.sleep(0.1)
    assert cancelled and cancelled[-1]["finish"] == "cancelled", cancelled
    assert cancelled[-1]["generated_tokens"] < 1500
    assert server.metrics().get('llamanode_generations_total{outcome="cancelled"}', 0) >= 1


def test_disconnect_while_not_streaming_also_cancels(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "a, b, c, d,", "max_tokens": 1500, "temperature": 0}
    sock = _raw_stream(server, body, "dc-plain")
    time.sleep(1.0)
    sock.close()
    deadline = time.monotonic() + 20
    logs: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not logs:
        logs = [line for line in server.request_logs("/v1/completions") if line.get("workspace") == "dc-plain"]
        time.sleep(0.1)
    assert logs and logs[-1]["finish"] == "cancelled" and logs[-1]["generated_tokens"] < 1500


@pytest.mark.slow
def test_long_load_run(server: ServerProcess) -> None:
    """The same check for a full minute (slow)."""
    _run_load(server, 60.0)


def test_disconnect_during_a_long_prefill_abandons_it(server: ServerProcess) -> None:
    """A ~1900-token cold prompt prefills in 512-token chunks; hanging up stops it after a chunk."""
    prompt = "def f(x):\n    return x + 1\n" * 150
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True}
    mark = server.mark()
    sock = _raw_stream(server, body, "dc-prefill")
    time.sleep(0.3)
    sock.close()
    (line,) = server.wait_logs(mark, 1, "/v1/completions", timeout=60)
    assert line["status"] == 499 and line["client_gone"] and line.get("cancelled_in") == "prefix", line
    again = server.client().completions.create(
        model=MODEL,
        prompt="def g(y):",
        max_tokens=4,
        temperature=0,
        extra_headers={"X-Llamanode-Workspace": "dc-prefill"},
    )
    assert again.choices[0].text is not None  # the workspace is usable
