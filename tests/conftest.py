"""Shared fixtures. Real-model tests use the default model (SmolLM2-135M) with one thread.

One thread is deliberate: this machine has 2 cores shared with other jobs, and llama.cpp's
spinning thread barriers make 2 threads up to 10x slower under contention. Warm and cold
sessions always share one Config, so thread count cannot explain a difference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings

import llamanode
from fakes import FakeBackend
from llamanode import Config, DecodeConfig, KVSession, StreamChunk, registry

settings.register_profile(
    "llamanode",
    deadline=None,  # a shared 2-core machine: timing is noise
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("llamanode"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "llamanode"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Model digests are remembered in a directory of this run, never the user's cache (servers inherit it)."""
    before = os.environ.get("LLAMANODE_CACHE_DIR")
    os.environ["LLAMANODE_CACHE_DIR"] = str(tmp_path_factory.mktemp("llamanode-cache"))
    yield
    if before is None:
        del os.environ["LLAMANODE_CACHE_DIR"]
    else:
        os.environ["LLAMANODE_CACHE_DIR"] = before


REAL_CONFIG = Config(num_ctx=2048, num_threads=1)
SMALL_CONFIG = Config(num_ctx=256, num_threads=1)

SYSTEM = "<|im_start|>system\nYou are a careful coding assistant. Answer briefly.<|im_end|>\n"
REPO_MAP = "<|im_start|>user\nRepository map:\n- calc.py: add, sub, mul\n- text.py: slug, title\n"
CALC = (
    "\nFile calc.py:\n```python\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
    "def mul(a, b):\n    result = 0\n    for _ in range(b):\n        result = add(result, a)\n    return result\n```\n"
)
TEXT = (
    "\nFile text.py:\n```python\nimport re\n\n\ndef slug(text):\n    text = text.lower().strip()\n"
    "    return re.sub(r'[^a-z0-9]+', '-', text).strip('-')\n\n\ndef title(text):\n"
    "    return ' '.join(w.capitalize() for w in text.split())\n```\n"
)
# (name, text) segments of the realistic prefix; the seams tokenize stably (checked in tests).
SEGMENTS: tuple[tuple[str, str], ...] = (("system", SYSTEM), ("repo_map", REPO_MAP), ("calc", CALC), ("text", TEXT))
SUFFIX = "Explain what mul does and suggest a faster version.<|im_end|>\n<|im_start|>assistant\n"
SUFFIX_2 = "Write a docstring for slug.<|im_end|>\n<|im_start|>assistant\n"
GREEDY_32 = DecodeConfig(max_tokens=32)


@dataclass(frozen=True)
class Answer:
    """Everything a decode produced, for exact comparisons."""

    text: str
    token_ids: tuple[int, ...]
    generated_tokens: int
    stop_reason: str
    finish_reason: str | None

    @classmethod
    def of(cls, chunks: list[StreamChunk]) -> Answer:
        final = chunks[-1]
        assert final.report is not None and final.finish_reason is not None
        assert all(c.finish_reason is None for c in chunks[:-1])
        ids = tuple(t for c in chunks for t in c.token_ids)
        assert len(ids) == final.report.generated_tokens, "every generated token id is streamed once"
        return cls(
            text="".join(c.text for c in chunks),
            token_ids=ids,
            generated_tokens=final.report.generated_tokens,
            stop_reason=final.report.stop_reason,
            finish_reason=final.finish_reason,
        )


def decode_answer(session: KVSession, config: DecodeConfig = GREEDY_32) -> Answer:
    return Answer.of(list(session.decode(config)))


def open_real(config: Config = REAL_CONFIG) -> KVSession:
    session = llamanode.open_session(None, config)
    return session


@pytest.fixture(scope="session")
def model_keeper() -> Iterator[KVSession]:
    """Keeps the default model loaded for the whole run (contexts share it)."""
    if not llamanode.session_available():
        pytest.fail("llama-cpp-python is not importable: run scripts/setup")
    session = open_real(SMALL_CONFIG)
    yield session
    session.close()


ColdFn = Callable[[tuple[tuple[str, str], ...], str, DecodeConfig], Answer]


@pytest.fixture(scope="session")
def cold(model_keeper: KVSession) -> ColdFn:
    """The reference: a fresh session per call, prefix + suffix + decode. Results are memoised."""
    memo: dict[tuple[object, ...], Answer] = {}

    def run(segments: tuple[tuple[str, str], ...], suffix: str, config: DecodeConfig = GREEDY_32) -> Answer:
        key = (segments, suffix, config.max_tokens, config.temperature, config.seed, config.stop)
        if key not in memo:
            with open_real() as session:
                session.ensure_prefix(session.prefix(segments))
                session.prefill_suffix(session.suffix(suffix))
                memo[key] = decode_answer(session, config)
        return memo[key]

    return run


@pytest.fixture
def real(model_keeper: KVSession) -> Iterator[KVSession]:
    """A fresh real session (num_ctx 2048), closed after the test."""
    session = open_real()
    yield session
    session.close()


@pytest.fixture
def small(model_keeper: KVSession) -> Iterator[KVSession]:
    """A fresh real session with num_ctx 256, for overflow tests."""
    session = open_real(SMALL_CONFIG)
    yield session
    session.close()


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> list[FakeBackend]:
    """Registers the toy backend for the test; every handle it hands out is listed."""
    made: list[FakeBackend] = []

    def load(path: str, config: Config) -> FakeBackend:
        made.append(FakeBackend(path))
        return made[-1]

    monkeypatch.setattr(registry, "_loader", load)
    return made
