"""Graceful shutdown: SIGTERM drains (in-flight requests finish up to the deadline, the rest end with
a typed error event), checkpoints the pool and exits 0; a second signal exits at once; the store
stays verifiable either way, and a restarted server is warm."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from test_server_support import MODEL, ServerProcess, chat, conversation, start_server


@pytest.fixture
def store() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="llamanode-shutdown-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Stream:
    """A streamed completion read on a thread: its SSE lines as they come."""

    def __init__(self, server: ServerProcess, workspace: str, max_tokens: int) -> None:
        self.lines: list[str] = []
        self.first = threading.Event()
        self.error: BaseException | None = None
        body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": max_tokens, "temperature": 0, "stream": True}
        self.thread = threading.Thread(target=self._read, args=(server, workspace, body))
        self.thread.start()

    def _read(self, server: ServerProcess, workspace: str, body: dict[str, object]) -> None:
        try:
            with (
                httpx.Client(base_url=server.url, timeout=120) as http,
                http.stream("POST", "/v1/completions", json=body, headers={"X-Llamanode-Workspace": workspace}) as r,
            ):
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        self.first.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first.set()

    def events(self) -> list[object]:
        return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in self.lines]


def _verify(store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llamanode.cli", "snapshot", "verify", "--store", store],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _refuses_connections(server: ServerProcess) -> bool:
    parts = urlsplit(server.url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_checkpoints_and_exits_0_and_the_restarted_server_is_warm(store: str) -> None:
    server = start_server("--shutdown-timeout", "5", store=store)
    try:
        convo = conversation("total")[:2]
        cold = chat(server, convo, workspace="sd-warm", max_tokens=8)
        long = Stream(server, "sd-long", max_tokens=1500)  # far more than 5 s of decoding
        assert long.first.wait(60) and long.error is None
        short = Stream(server, "sd-short", max_tokens=24)
        assert short.first.wait(60) and short.error is None
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert _refuses_connections(server)  # stopped accepting at once
        long.thread.join(60)
        short.thread.join(60)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert short.events()[-1] == "[DONE]"  # finished within the deadline
    last = long.events()[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "server_shutting_down", long.lines[-3:]
    assert "[DONE]" not in long.events()
    events = [line.get("event") for line in server.lines]
    assert "shutting_down" in events and events[-1] == "stopped"
    verified = _verify(store)
    found = re.search(r"(\d+) ok, 0 bad", verified.stdout)
    assert verified.returncode == 0 and found and int(found.group(1)) >= 3, verified.stdout  # every workspace

    again = start_server(store=store)
    try:
        warm = chat(again, convo, workspace="sd-warm", max_tokens=8)
    finally:
        again.stop()
    assert warm.usage.prompt_tokens_details.cached_tokens > 0  # type: ignore[union-attr]
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_a_second_signal_exits_at_once_and_leaves_a_verifiable_store(store: str) -> None:
    server = start_server("--shutdown-timeout", "60", store=store)
    try:
        chat(server, conversation("product")[:2], workspace="sd-snap", max_tokens=4)
        with server.http() as http:
            assert http.post("/v1/llamanode/sessions/sd-snap/snapshot").status_code == 200
        long = Stream(server, "sd-busy", max_tokens=1500)
        assert long.first.wait(60) and long.error is None
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(10)
        assert time.monotonic() - started < 5
        long.thread.join(30)
    finally:
        server.stop()
    assert code == 128 + signal.SIGTERM
    assert any(line.get("event") == "forced_exit" for line in server.lines)
    verified = _verify(store)
    assert verified.returncode == 0 and "1 ok, 0 bad" in verified.stdout, verified.stdout
