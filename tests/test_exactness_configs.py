"""Reuse is bit-exact, not just greedy-equal: last-token logits of warm, edited and shrunk sessions
equal a cold session's, for the default KV setting and for flash attention / q8_0 KV.

llama.cpp's kernels differ for one-token batches; KVSession never prefills one after position 0,
and these tests show that this is enough on their text. With flash attention, another text once gave a
two-token tail whose logits were 0.8 away from a cold pass (README: "Reuse never changes the answer").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import llamanode as ln
from llamanode.backends.llamacpp.context import LlamaCppContext

# A fixed Python source (the head of kvsession.py at 55c71c3): reading the live file let refactors change
# what these tests check (its "edit" below became a no-op once common_prefix_len moved to prefix.py).
SOURCE = (Path(__file__).parent / "data" / "exactness_source.py.txt").read_text(encoding="utf-8")
SYSTEM = "<|im_start|>system\nYou review Python code.<|im_end|>\n<|im_start|>user\n"
SUFFIX = "\nWhat does chunk_sizes return?<|im_end|>\n<|im_start|>assistant\n"
CONFIGS = {
    "f16": ln.Config(num_ctx=2048),
    "f16-flash-attn": ln.Config(num_ctx=2048, flash_attn=True),
    "q8_0-flash-attn": ln.Config(num_ctx=2048, flash_attn=True, kv_cache_type="q8_0"),
}


def _logits(session: ln.KVSession) -> np.ndarray:  # type: ignore[type-arg]
    context = session._ctx
    assert isinstance(context, LlamaCppContext)
    return context.last_logits()


def _cold(config: ln.Config, segments: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, list[int]]:  # type: ignore[type-arg]
    with ln.open_session(None, config) as cold:
        cold.ensure_prefix(cold.prefix(segments))
        cold.prefill_suffix(cold.suffix(SUFFIX))
        logits = _logits(cold)
        return logits, _greedy(cold)


def _greedy(session: ln.KVSession) -> list[int]:
    return [t for chunk in session.decode(ln.DecodeConfig(max_tokens=24)) for t in chunk.token_ids]


@pytest.fixture(
    params=[
        "f16",
        pytest.param("f16-flash-attn", marks=pytest.mark.slow),
        pytest.param("q8_0-flash-attn", marks=pytest.mark.slow),
    ],
    scope="module",
)
def warm(request: pytest.FixtureRequest) -> Iterator[tuple[ln.Config, ln.KVSession]]:
    config = CONFIGS[request.param]
    session = ln.open_session(None, config)
    yield config, session
    session.close()


def _segments(source: str) -> tuple[tuple[str, str], ...]:
    return (("system", SYSTEM), ("file", source))


def test_warm_edited_and_shrunk_prefixes_are_bit_exact(warm: tuple[ln.Config, ln.KVSession]) -> None:
    config, session = warm
    edited = SOURCE.replace("def common_prefix_len", "def shared_prefix_len")
    shrunk = SOURCE[: len(SOURCE) * 2 // 3]
    session.ensure_prefix(session.prefix(_segments(SOURCE)))
    session.prefill_suffix(session.suffix("\nAn earlier turn.<|im_end|>\n"))
    list(session.decode(ln.DecodeConfig(max_tokens=8)))
    for text, expect in ((SOURCE, "reused"), (edited, "edited"), (shrunk, "shrunk")):
        status = session.ensure_prefix(session.prefix(_segments(text)))
        assert status.reused_tokens > 0, expect
        session.prefill_suffix(session.suffix(SUFFIX))
        warm_logits, warm_tokens = _logits(session), _greedy(session)
        cold_logits, cold_tokens = _cold(config, _segments(text))
        assert np.array_equal(warm_logits, cold_logits), f"{expect}: max diff {np.abs(warm_logits - cold_logits).max()}"
        assert warm_tokens == cold_tokens, expect


def test_restored_state_is_bit_exact(warm: tuple[ln.Config, ln.KVSession]) -> None:
    config, session = warm
    session.ensure_prefix(session.prefix(_segments(SOURCE)))
    state = session.export_state()
    with ln.open_session(None, config) as restored:
        restored.import_state(state)
        assert restored.ensure_prefix(restored.prefix(_segments(SOURCE))).byte_hash_hit
        restored.prefill_suffix(restored.suffix(SUFFIX))
        logits, tokens = _logits(restored), _greedy(restored)
    cold_logits, cold_tokens = _cold(config, _segments(SOURCE))
    assert np.array_equal(logits, cold_logits)
    assert tokens == cold_tokens
