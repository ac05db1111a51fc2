"""Helpers for the server tests: a real `llamanode serve` process on a free loopback port.

No tests here; test_server_*.py import the fixtures and helpers. Servers run with one thread
per context (see conftest.py) and num_ctx 2048.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gates import wait_until

MODEL = "SmolLM2-135M-Instruct.Q4_1"
API_KEY = "test-key-123"
ALLOWED_ORIGIN = "http://localhost:5173"
BASE_ARGS = ("--threads", "1", "--ctx", "2048")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str
    api_key: str | None
    store_dir: str
    owns_store: bool = True
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw_stderr: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None
    _client: openai.OpenAI | None = None

    def client(self) -> openai.OpenAI:
        """One shared client per server (closed at stop)."""
        if self._client is None:
            self._client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0)
        return self._client

    def http(self, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request_logs(self, path: str | None = None) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if "method" in line and (path is None or line["path"] == path)]

    def mark(self, timeout: float = 60.0) -> int:
        """A position in the log after every earlier request has finished and been logged.

        A request's line is written when all its work is done, and a warm-next prewarm may go on after
        it; so wait until nothing runs and every warm-next has ended, then send a probe whose line comes
        after every earlier one (lines are written in order).
        """
        probe = f"/__mark__/{uuid.uuid4().hex}"
        deadline = time.monotonic() + timeout
        with self.http() as http:
            while http.get("/health").json()["active"] > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        self.settle_warm_next(max(deadline - time.monotonic(), 1.0))
        with self.http() as http:
            http.get(probe)
        while time.monotonic() < deadline:
            for index, line in enumerate(list(self.lines)):
                if line.get("path") == probe:
                    return index + 1
            time.sleep(0.02)
        raise TimeoutError(f"the server did not log {probe}")

    def wait_logs(self, mark: int, count: int, path: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The request log lines for path written after mark, once there are count of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines[mark:] if "method" in line and line["path"] == path]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def settle_warm_next(self, timeout: float = 60.0) -> None:
        """Wait until every warm-next prewarm the server started has ended: the workspaces hold their final state."""

        def settled() -> bool:
            samples = self.metrics()
            ended = sum(v for k, v in samples.items() if k.startswith("llamanode_warm_next_total"))
            return ended >= samples.get("llamanode_warm_next_started_total", 0.0)

        wait_until(settled, timeout, 0.05, "warm-next prewarms still running")

    def warm_next_done(self, outcome: str = "completed") -> float:
        """How many warm-next prewarms (the answer prefilled for the next turn) ended with outcome."""
        return self.metrics().get(f'llamanode_warm_next_total{{outcome="{outcome}"}}', 0.0)

    def wait_warm_next(self, before: float, timeout: float = 60.0) -> None:
        """Wait until another warm-next prewarm has completed since warm_next_done() gave `before`."""
        wait_until(lambda: self.warm_next_done() > before, timeout, 0.05, "no warm-next prewarm completed")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as {'name{labels}': value}, parsed by prometheus-client's parser."""
        return {key: value for key, (_, value) in self.metric_samples().items()}

    def metric_samples(self) -> dict[str, tuple[str, float]]:
        """Every sample of /metrics as {'name{labels}': (its family's type, value)}."""
        with self.http() as http:
            text = http.get("/metrics").text
        samples: dict[str, tuple[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = (family.type, sample.value)
        return samples

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.drain is not None:
            self.drain.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        if self.owns_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)


def start_server(
    *args: str, api_key: str | None = None, timeout: float = 120.0, store: str | None = None
) -> ServerProcess:
    """A `llamanode serve` process on a free port; its own temporary store unless one is given (kept)."""
    store_dir = store or tempfile.mkdtemp(prefix="llamanode-serve-test-")
    cmd = [sys.executable, "-m", "llamanode.cli", "serve", "--port", "0", "--store-dir", store_dir, *BASE_ARGS, *args]
    if api_key:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = ServerProcess(proc, "", api_key, store_dir, owns_store=store is None)
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            server.raw_stderr.append(raw)
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                server.lines.append(line)
                if line.get("event") == "listening":
                    server.url = line["url"]
                    ready.set()
        ready.set()

    server.drain = threading.Thread(target=drain, daemon=True)
    server.drain.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("server did not start in time:\n" + "".join(server.raw_stderr))
    if not server.url:
        server.stop()
        raise RuntimeError("server exited before listening:\n" + "".join(server.raw_stderr))
    return server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The shared server: no API key, default limits."""
    proc = start_server()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def locked_server() -> Iterator[ServerProcess]:
    """A second server: API key on, small limits, one compute slot and a queue of one."""
    proc = start_server(
        "--max-body",
        "64K",
        "--max-prompt",
        "16K",
        "--parallel",
        "1",
        "--max-queue",
        "1",
        "--cors-origin",
        ALLOWED_ORIGIN,
        api_key=API_KEY,
    )
    yield proc
    proc.stop()


def chat(
    server: ServerProcess,
    messages: list[dict[str, str]],
    workspace: str | None = None,
    max_tokens: int = 16,
    **extra: Any,
) -> Any:
    headers = {"X-Llamanode-Workspace": workspace} if workspace else {}
    client = server.client()
    return client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        extra_headers=headers,
        **extra,
    )


def conversation(topic: str) -> list[dict[str, str]]:
    """A two-turn coding conversation; the assistant turn is fixed text."""
    return [
        {"role": "system", "content": f"You are a terse coding assistant working on the {topic} module."},
        {"role": "user", "content": f"Write a Python function that returns the {topic} of a list."},
        {"role": "assistant", "content": f"def {topic}(xs):\n    return {topic}(xs)"},
        {"role": "user", "content": "Now add a docstring."},
    ]
