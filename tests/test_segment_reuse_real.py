"""Approximate segment reuse on the real default model: it runs, it reports, its KV positions are consistent,
and an exact turn after it is bit-identical to a cold session (logits and greedy tokens)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CALC, GREEDY_32, SEGMENTS, SUFFIX, ColdFn, decode_answer, open_real
from llamanode import ApproxReuse, Config, KVSession
from llamanode.backends.llamacpp.context import LlamaCppContext
from llamanode.backends.llamacpp.native import lib

EDITED_CALC = CALC.replace("    result = 0\n", "    result = 0  # the running sum\n")
EDITED = tuple((name, EDITED_CALC if name == "calc" else text) for name, text in SEGMENTS)
WITHOUT_MAP = tuple(seg for seg in SEGMENTS if seg[0] != "repo_map")
BOUNDARY = ApproxReuse(selection="boundary", share=0.1, min_run=8)
TAIL = ApproxReuse(selection="tail", share=0.2, min_run=8)


def context(session: KVSession) -> LlamaCppContext:
    ctx = session._ctx
    assert isinstance(ctx, LlamaCppContext)
    return ctx


def positions(session: KVSession) -> tuple[int, int, int]:
    """(first, last) position of the session's sequence, and the last of the parking sequence (-1: empty)."""
    ctx = context(session)
    L = lib()
    mem = ctx._mem
    return L.llama_memory_seq_pos_min(mem, 0), L.llama_memory_seq_pos_max(mem, 0), L.llama_memory_seq_pos_max(mem, 1)


def cold_logits(config: Config, segments: tuple[tuple[str, str], ...]) -> np.ndarray:  # type: ignore[type-arg]
    with open_real(config) as cold:
        cold.ensure_prefix(cold.prefix(segments))
        cold.prefill_suffix(cold.suffix(SUFFIX))
        return context(cold).last_logits()


def test_an_approximate_turn_reports_and_the_exact_turn_after_it_is_cold(real: KVSession, cold: ColdFn) -> None:
    real.ensure_prefix(real.prefix(SEGMENTS))
    real.prefill_suffix(real.suffix(SUFFIX))
    decode_answer(real)
    status = real.ensure_prefix(real.prefix(EDITED), approximate=BOUNDARY)
    approx = status.approximation
    assert approx is not None and approx.segments == ("calc", "text") and approx.note == ""
    assert approx.reused_tokens > approx.recomputed_tokens > 0 and approx.shifted_tokens == approx.reused_tokens
    assert status.approximate_from == approx.approximate_from
    assert status.prefilled_tokens == approx.recomputed_tokens + approx.prefilled_tokens
    assert status.prefilled_tokens < status.prefix_tokens - (status.approximate_from or 0)
    assert positions(real) == (0, status.prefix_tokens - 1, -1)
    report = real.explain_context()
    assert report.approximate_from == status.approximate_from
    assert [row.state for row in report.segments] == ["reused", "reused", "approximated", "approximated"]
    real.prefill_suffix(real.suffix(SUFFIX))
    assert decode_answer(real).generated_tokens == GREEDY_32.max_tokens  # it decodes from approximate KV
    exact = real.ensure_prefix(real.prefix(EDITED))
    assert exact.divergence is not None and exact.divergence.cause == "approximated"
    assert exact.reused_tokens == status.approximate_from and exact.approximate_from is None
    real.prefill_suffix(real.suffix(SUFFIX))
    assert np.array_equal(context(real).last_logits(), cold_logits(real.config, EDITED))
    assert decode_answer(real) == cold(EDITED, SUFFIX, GREEDY_32)


def test_a_removed_segment_and_its_return_then_a_restored_state_turns_exact(real: KVSession, cold: ColdFn) -> None:
    real.ensure_prefix(real.prefix(SEGMENTS))
    removed = real.ensure_prefix(real.prefix(WITHOUT_MAP), approximate=TAIL)
    assert removed.approximation is not None and removed.approximation.segments == ("calc", "text")
    assert all(span.shift < 0 for span in removed.approximation.spans)
    back = real.ensure_prefix(real.prefix(SEGMENTS), approximate=TAIL)  # the map comes back: the files move right
    assert back.approximation is not None and all(span.shift > 0 for span in back.approximation.spans)
    assert positions(real) == (0, back.prefix_tokens - 1, -1)
    state = real.export_state()
    assert state.approximate_from is not None
    with open_real() as other:
        other.import_state(state)
        exact = other.ensure_prefix(other.prefix(SEGMENTS))
        assert exact.reused_tokens == state.approximate_from
        other.prefill_suffix(other.suffix(SUFFIX))
        assert decode_answer(other) == cold(SEGMENTS, SUFFIX, GREEDY_32)


@pytest.mark.parametrize("config", [Config(num_ctx=2048, num_threads=1, flash_attn=True, kv_cache_type="q8_0")])
def test_a_quantized_key_cache_shifts_too(config: Config) -> None:
    with open_real(config) as session:
        session.ensure_prefix(session.prefix(SEGMENTS))
        status = session.ensure_prefix(session.prefix(EDITED), approximate=BOUNDARY)
        assert status.approximation is not None and status.approximation.reused_tokens > 0
        session.ensure_prefix(session.prefix(EDITED))
        session.prefill_suffix(session.suffix(SUFFIX))
        assert np.array_equal(context(session).last_logits(), cold_logits(config, EDITED))
