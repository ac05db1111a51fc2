"""Processes the benchmarks start: servers on 127.0.0.1 polled until ready, and their command lines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .common import REPO

__all__ = [
    "LLAMA_SERVER",
    "Server",
    "free_port",
    "llama_server_cmd",
    "llamanode_serve_cmd",
    "model_id_of",
    "module_cmd",
]

LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER", Path.home() / ".cache/llamanode/llama-server/bin/llama-server"))
"""llama.cpp's own server of the vendored revision, built by bench/build_llama_server.sh."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process on 127.0.0.1: started, polled on ready_path until it answers 200, stopped."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path, timeout: float = 300.0) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{self.name}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                cwd=REPO,  # so that `python -m bench.<name>` finds the package
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_id_of(server: Server) -> str:
    data = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    return str(data[0]["id"])


def module_cmd(name: str, *args: str) -> list[str]:
    """`python -m bench.<name> args...` with this interpreter; run it with cwd=REPO (Server does)."""
    return [sys.executable, "-m", f"bench.{name}", *args]


def llamanode_serve_cmd(model: Path, port: int, threads: int, ctx: int, store_dir: Path, *extra: str) -> list[str]:
    """`llamanode serve` of this checkout's interpreter, one workspace at a time, quiet."""
    return [sys.executable, "-m", "llamanode.cli", "serve", "--port", str(port), "--model", str(model),
            "--ctx", str(ctx), "--threads", str(threads), "--parallel", "1", "--store-dir", str(store_dir),
            "--quiet", *extra]  # fmt: skip


def llama_server_cmd(
    model: Path, port: int, threads: int, ctx: int, *extra: str, train_ctx: int = 8192, repack: bool = True
) -> list[str]:
    """llama-server with the Jinja templates, flash attention off (llamanode's default), one slot.

    A window beyond the model's training context is reached by YaRN, as llamanode does:
    `--rope-scaling yarn --rope-scale ctx/train_ctx --yarn-orig-ctx train_ctx`.
    """
    cmd = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
           "-t", str(threads), "-tb", str(threads), "-np", "1", "-fa", "off", "--jinja", "--no-webui"]  # fmt: skip
    if ctx > train_ctx:
        cmd += ["--rope-scaling", "yarn", "--rope-scale", f"{ctx / train_ctx:g}", "--yarn-orig-ctx", str(train_ctx)]
    if not repack:
        cmd.append("--no-repack")
    return [*cmd, *extra]
