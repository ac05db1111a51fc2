"""The baselines a trace is replayed against: llama-cpp-python's `Llama` and llama.cpp's llama-server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import now, open_llama
from .git_trace import TraceTurn
from .llama_server_proc import LlamaServer, llama_server_missing
from .replay import ReplaySetup, TurnResult

__all__ = ["LlamaServerReuseStrategy", "LlamaServerStrategy", "LlamaStrategy"]


class _PromptBaseline:
    """A system that sees only prompt text: it reuses a cached prompt prefix and does nothing between requests."""

    name: str

    def __init__(self, setup: ReplaySetup) -> None:
        self.setup = setup

    def think(self, index: int, upcoming: TraceTurn, seconds: float) -> None:
        """Nothing happens between requests."""

    def result(
        self, index: int, turn: TraceTurn, prefix_tokens: int, kept: int, prompt_tokens: int, ttft: float, first: str
    ) -> TurnResult:
        reused = min(kept, prefix_tokens)  # prompt-level reuse, counted against the prefix
        return TurnResult(
            strategy=self.name,
            turn=index,
            commit=turn.commit,
            prefix_tokens=prefix_tokens,
            reused_tokens=reused,
            recomputed_tokens=prefix_tokens - reused,
            suffix_tokens=prompt_tokens - prefix_tokens,
            ttft_s=ttft,
            first_token=first,
        )


class LlamaStrategy(_PromptBaseline):
    """llama-cpp-python's `Llama` on the same prompt text: the baseline users have today."""

    name = "llama"

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self._llm: Any = None

    def start(self) -> None:
        config = self.setup.config
        self._llm = open_llama(self.setup.model_path, config, threads=config.num_threads)  # 0: Llama's default

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()

    def turn(self, index: int, turn: TraceTurn) -> TurnResult:
        llm = self._llm
        tokens = llm.tokenize((turn.prefix_text + turn.suffix).encode(), add_bos=False, special=True)
        prefix_tokens = len(llm.tokenize(turn.prefix_text.encode(), add_bos=False, special=True))
        kept = _reused_by_llama(list(llm.input_ids[: llm.n_tokens]), tokens)
        started = now()
        out = llm.create_completion(turn.prefix_text + turn.suffix, max_tokens=1, temperature=0.0)
        ttft = now() - started
        return self.result(index, turn, prefix_tokens, kept, len(tokens), ttft, out["choices"][0]["text"])


class LlamaServerStrategy(_PromptBaseline):
    """llama.cpp's llama-server on the same prompt text (one slot, cache_prompt), optionally --cache-reuse."""

    name = "llama-server"
    cache_reuse = 0

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self._server: LlamaServer | None = None

    def start(self) -> None:
        why = llama_server_missing()
        if why is not None:
            raise RuntimeError(f"{self.name}: {why}")
        self._server = LlamaServer(self.setup.model_path, self.setup.config, self.cache_reuse)
        self._server.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()

    def turn(self, index: int, turn: TraceTurn) -> TurnResult:
        server = self._server
        assert server is not None, "start() first"
        prefix_tokens = server.count(turn.prefix_text)
        done = server.complete_one(turn.prefix_text + turn.suffix)
        prompt_tokens = done.cached + done.processed
        result = self.result(index, turn, prefix_tokens, done.cached, prompt_tokens, done.seconds, done.text)
        result.detail.update(cache_n=done.cached, prompt_n=done.processed)
        return result


class LlamaServerReuseStrategy(LlamaServerStrategy):
    name = "llama-server-reuse64"
    cache_reuse = 64


def _reused_by_llama(resident: Sequence[int], tokens: Sequence[int]) -> int:
    """What Llama.generate keeps: the common prefix, one less when it covers the whole prompt."""
    n = 0
    for a, b in zip(resident, tokens, strict=False):
        if a != b:
            break
        n += 1
    return n - 1 if n == len(tokens) and n > 0 else n
