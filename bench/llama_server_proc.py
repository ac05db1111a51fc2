"""llama.cpp's own llama-server as a replay system: one process, one slot, `/completion` with `cache_prompt`.

Launched like bench/server.py launches it (the vendored revision, built by bench/build_llama_server.sh):
same context, batch sizes and threads as llamanode, `-fa off`, and llamanode's weight-repack choice
(`--no-repack` where llamanode turns repacking off). `cache_reuse` adds `--cache-reuse N`: llama-server
then also keeps chunks of at least N matching tokens after the first divergence by shifting their KV.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from llamanode import Config

from .processes import LLAMA_SERVER, Server, free_port
from .raw_loop import repack_decision

__all__ = ["LLAMA_SERVER", "Completion", "LlamaServer", "llama_server_missing"]


def llama_server_missing() -> str | None:
    """Why llama-server cannot run here, or None."""
    if not LLAMA_SERVER.exists():
        return f"{LLAMA_SERVER} not built (run bench/build_llama_server.sh)"
    return None


@dataclass(frozen=True)
class Completion:
    seconds: float  # the whole request: tokenize, prompt eval, the first token
    text: str
    cached: int  # timings.cache_n: prompt tokens whose KV was kept (shifted chunks included)
    processed: int  # timings.prompt_n: prompt tokens evaluated


class LlamaServer:
    """A running llama-server with one slot; stop() ends it."""

    def __init__(self, model_path: str, config: Config, cache_reuse: int = 0) -> None:
        repack = "--repack" if repack_decision(config.weight_repack).enabled else "--no-repack"
        threads = str(config.threads)
        port = free_port()
        cmd = [str(LLAMA_SERVER), "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
               "-c", str(config.num_ctx), "-b", str(config.num_batch), "-ub", str(config.num_ubatch),
               "-t", threads, "-tb", threads, "-np", "1", "-fa", "off", "--no-webui", repack]  # fmt: skip
        if cache_reuse:
            cmd += ["--cache-reuse", str(cache_reuse)]
        self.command = cmd
        self._server = Server(f"llama-server-{port}", cmd, port, "/health")
        self._logs = tempfile.TemporaryDirectory(prefix="llama-server-")
        self._client = httpx.Client(base_url=self._server.url, timeout=3600)

    def start(self) -> None:
        self._server.start(Path(self._logs.name))

    def stop(self) -> None:
        self._client.close()
        self._server.stop()
        self._logs.cleanup()

    def count(self, text: str) -> int:
        body = {"content": text, "add_special": False, "parse_special": True}
        response = self._client.post("/tokenize", json=body)
        response.raise_for_status()
        return len(response.json()["tokens"])

    def complete_one(self, prompt: str) -> Completion:
        """The first token of prompt, greedy, reusing the slot's cached prompt."""
        body = {"prompt": prompt, "n_predict": 1, "cache_prompt": True, "temperature": 0.0, "stream": False}
        started = time.perf_counter()
        response = self._client.post("/completion", json=body)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        data = response.json()
        timings = data.get("timings") or {}
        return Completion(seconds, data.get("content", ""), int(timings["cache_n"]), int(timings["prompt_n"]))
