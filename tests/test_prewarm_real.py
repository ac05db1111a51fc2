"""Prewarm on the real default model: joined, cancelled, superseded and interrupted prewarms, and one a new
session's fork copies halfway, leave exact state (greedy tokens equal a cold session's, token for token),
and a request waits for no chunk: the chunk
in flight is interrupted, unless the request needs it (the same prefix: it waits for that chunk's end).
Counted through a chunk gate: every prewarm chunk needs a permit, the request gets exactly one; and
mid-decode, with one chunk of 512 tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamanode
from conftest import SEGMENTS, SUFFIX, SUFFIX_2, Answer, decode_answer
from gates import PREWARM_THREAD, ChunkGate, gate_pool, stop_after, wait_until
from llamanode import Config, DecodeConfig, KVSession, SessionPool
from llamanode.backends.llamacpp.native import lib
from llamanode.errors import PrefillInterruptedError

CFG = Config(num_ctx=1024, num_batch=16, num_ubatch=16, num_threads=1)  # ~200-token prefixes: many chunks
DECODE = DecodeConfig(max_tokens=16)
Segments = tuple[tuple[str, str], ...]


def edit(segments: Segments, name: str, old: str, new: str) -> Segments:
    out = tuple((n, t.replace(old, new)) for n, t in segments)
    assert out != segments and dict(out)[name] != dict(segments)[name]
    return out


EDITED = edit(SEGMENTS, "calc", "result = add(result, a)", "result = result + a")  # mid-prefix edit
OTHER = edit(SEGMENTS, "text", "def title(text):", "def headline(text):")  # a later edit

_cold: dict[tuple[Segments, str], Answer] = {}


def cold(segments: Segments, suffix: str) -> Answer:
    if (segments, suffix) not in _cold:
        with llamanode.open_session(None, CFG) as fresh:
            fresh.ensure_prefix(fresh.prefix(segments))
            fresh.prefill_suffix(fresh.suffix(suffix))
            _cold[segments, suffix] = decode_answer(fresh, DECODE)
    return _cold[segments, suffix]


def answer(session: KVSession, suffix: str) -> Answer:
    session.prefill_suffix(session.suffix(suffix))
    return decode_answer(session, DECODE)


@pytest.fixture
def warm(model_keeper: KVSession) -> Iterator[tuple[KVSession, ChunkGate]]:
    """A real session whose context's prewarm chunks go through a gate, after one turn on SEGMENTS."""
    backend = llamanode.load_backend(None, CFG)
    context = backend.open_context(CFG)
    gate = ChunkGate(context)
    session = KVSession(context, CFG, on_close=backend.close)
    session.ensure_prefix(session.prefix(SEGMENTS))
    assert answer(session, SUFFIX) == cold(SEGMENTS, SUFFIX)
    yield session, gate
    gate.open()
    session.close()


def test_a_joined_prewarm_answers_like_a_cold_session(warm: tuple[KVSession, ChunkGate]) -> None:
    session, gate = warm
    handle = session.prewarm(session.prefix(EDITED))
    status = stop_after(gate, handle, 2, lambda: session.ensure_prefix(session.prefix(EDITED))).outcome(120)
    assert gate.prewarm_chunks() == 3  # two, and the one in flight when the request came (which needs it)
    report = handle.wait(1)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("joined", "ensure_prefix", 48)
    assert report.reused_tokens is not None and status.reused_tokens == report.reused_tokens + 48
    assert status.prefilled_tokens > 0 and status.prefix_tokens == report.prefix_tokens
    assert status.divergence is not None and status.divergence.cause == "resumed"
    assert answer(session, SUFFIX_2) == cold(EDITED, SUFFIX_2)


def test_a_prewarm_cancelled_by_another_prefix_answers_like_a_cold_session(warm: tuple[KVSession, ChunkGate]) -> None:
    session, gate = warm
    handle = session.prewarm(session.prefix(EDITED))
    status = stop_after(gate, handle, 2, lambda: session.ensure_prefix(session.prefix(OTHER))).outcome(120)
    report = handle.wait(1)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("cancelled", "ensure_prefix", 32)
    assert report.reused_tokens is not None and status.reused_tokens == report.reused_tokens  # up to the edit
    assert status.divergence is not None and status.divergence.segment == "calc"
    assert answer(session, SUFFIX_2) == cold(OTHER, SUFFIX_2)


def test_a_prewarm_cancelled_by_decode_is_resumed_exactly(warm: tuple[KVSession, ChunkGate]) -> None:
    session, gate = warm
    handle = session.prewarm(session.prefix(EDITED))
    with pytest.raises(llamanode.InvalidInputError):  # the old prefix is gone, the new one unfinished
        stop_after(gate, handle, 1, lambda: session.decode(DECODE)).outcome(120)
    assert (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "decode")
    status = session.ensure_prefix(session.prefix(EDITED))
    assert status.divergence is not None and status.divergence.cause == "resumed"
    assert answer(session, SUFFIX_2) == cold(EDITED, SUFFIX_2)


def test_a_superseded_prewarm_answers_like_a_cold_session(warm: tuple[KVSession, ChunkGate]) -> None:
    session, gate = warm
    first = session.prewarm(session.prefix(EDITED))
    gate.run_chunks(2)
    second = session.prewarm(session.prefix(OTHER))
    gate.open()
    assert (first.wait(120).outcome, first.wait(1).by) == ("superseded", "prewarm")
    assert second.wait(120).outcome == "completed"
    assert session.ensure_prefix(session.prefix(OTHER)).byte_hash_hit
    assert answer(session, SUFFIX_2) == cold(OTHER, SUFFIX_2)


def test_close_interrupts_a_prewarm_and_never_touches_the_context_after(
    warm: tuple[KVSession, ChunkGate],
) -> None:
    session, gate = warm
    handle = session.prewarm(session.prefix(EDITED))
    stop_after(gate, handle, 1, session.close).outcome(120)
    assert (handle.wait(1).outcome, handle.wait(1).by, gate.prewarm_chunks()) == ("interrupted", "close", 1)
    chunks = len(gate.log)
    gate.open()
    assert not any(t.name == PREWARM_THREAD for t in threading.enumerate()) and len(gate.log) == chunks


def test_a_prewarmed_evicted_workspace_answers_like_a_cold_session(model_keeper: KVSession, tmp_path: Path) -> None:
    with SessionPool(None, CFG, store_dir=tmp_path / "probe") as probe:
        budget = probe.budget_for(1)
    with SessionPool(None, CFG, store_dir=tmp_path / "store", memory_budget_bytes=budget) as pool:
        gate = gate_pool(pool)
        for workspace in ("a", "b"):  # b evicts a
            with pool.session(workspace) as s:
                s.ensure_prefix(s.prefix(SEGMENTS))
                assert answer(s, SUFFIX) == cold(SEGMENTS, SUFFIX)
        handle = pool.prewarm("a", EDITED)  # restores a (evicting b), then prewarms it
        assert pool.stats().restores == 1

        def lease_and_answer() -> tuple[Any, Answer]:
            with pool.session("a") as s:
                status = s.ensure_prefix(s.prefix(EDITED))
                return status, answer(s, SUFFIX_2)

        status, got = stop_after(gate, handle, 2, lease_and_answer).outcome(120)
        gate.open()
        assert handle.wait(1).outcome == "joined" and status.reused_tokens > 0
        assert got == cold(EDITED, SUFFIX_2)
        assert pool.stats().prewarm_outcomes == {"joined": 1}


def test_a_new_sessions_fork_of_a_half_done_warm_next_answers_like_a_cold_session(
    model_keeper: KVSession, tmp_path: Path
) -> None:
    """fork_nearest while the source's finish=True prewarm (the server's warm-next) is halfway: the fork
    copies the unfinished prefill and resumes it exactly; the source prewarms the rest again, exactly."""
    with SessionPool(None, CFG, store_dir=tmp_path / "store") as pool:
        gate = gate_pool(pool)
        with pool.session("a") as s:
            s.ensure_prefix(s.prefix(SEGMENTS))
            assert answer(s, SUFFIX) == cold(SEGMENTS, SUFFIX)
            handle = s.prewarm(s.prefix(EDITED), finish=True)
            prompt, source = s.tokenize(s.prefix(EDITED).text), s
        origin = stop_after(gate, handle, 2, lambda: pool.fork_nearest("b", prompt, 16)).outcome(120)
        assert (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "fork")
        assert origin is not None and origin.copied_tokens == origin.shared_tokens + 32  # 2 chunks past the edit
        with pool.session("b") as b:
            status = b.ensure_prefix(b.prefix(EDITED))
            assert status.reused_tokens == origin.copied_tokens and status.prefilled_tokens > 0
            assert answer(b, SUFFIX_2) == cold(EDITED, SUFFIX_2)
        gate.open()
        wait_until(lambda: not source.prewarming, 120)
        with pool.session("a") as s:
            report = s.explain_context().last_prewarm
            assert report is not None and (report.outcome, report.reused_tokens) == ("completed", origin.copied_tokens)
            assert s.ensure_prefix(s.prefix(EDITED)).byte_hash_hit
            assert answer(s, SUFFIX_2) == cold(EDITED, SUFFIX_2)


BIG = Config(num_ctx=2048, num_batch=512, num_ubatch=512, prewarm_batch=512, num_threads=1)
LONG = tuple((f"{name}{i}", text) for i in range(7) for name, text in SEGMENTS)  # ~1500 tokens: 3 chunks


def test_a_big_chunk_cancelled_mid_decode_leaves_the_boundary_below_it(model_keeper: KVSession) -> None:
    """The cancel lands while llama_decode runs the second 512-token chunk: the abort callback stops the
    graph, llama.cpp drops that ubatch's cells, and the session resumes exactly from the first chunk."""
    backend = llamanode.load_backend(None, BIG)
    context: Any = backend.open_context(BIG)
    inner, in_second, interrupted = context.prefill, threading.Event(), []

    def prefill(tokens: list[int], start: int) -> None:
        if threading.current_thread().name == PREWARM_THREAD and start == 512:
            in_second.set()
        try:
            inner(tokens, start)
        except PrefillInterruptedError as exc:
            interrupted.append((start, str(exc), lib().llama_memory_seq_pos_max(context._mem, 0)))
            raise

    context.prefill = prefill
    with KVSession(context, BIG, on_close=backend.close) as session:
        prefix = session.prefix(LONG)
        handle = session.prewarm(prefix)
        assert in_second.wait(120)
        time.sleep(0.05)  # into the chunk's decode (hundreds of ms of graph on one thread)
        report = handle.cancel()
        assert (report.outcome, report.by, report.prefilled_tokens) == ("cancelled", "cancel", 512)
        assert report.prefix_tokens is not None and report.prefix_tokens > 1024
        assert len(interrupted) == 1, "the second chunk ended before the cancel came"
        start, message, pos_max = interrupted[0]
        assert start == 512 and "during its decode" in message and pos_max == 511  # the KV as before the chunk
        assert session.explain_context().resident_tokens == 512
        status = session.ensure_prefix(prefix)
        assert (status.reused_tokens, status.prefilled_tokens) == (512, report.prefix_tokens - 512)
        assert status.divergence is not None and status.divergence.cause == "resumed"
        warm = decode_answer(session, DECODE)
    with llamanode.open_session(None, BIG) as fresh:
        fresh.ensure_prefix(fresh.prefix(LONG))
        assert warm == decode_answer(fresh, DECODE)
