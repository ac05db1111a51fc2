"""KVSession.prewarm on the toy backend: joined, cancelled, superseded, interrupted and failed prewarms leave
exact state, and no call waits for the chunk in flight unless it needs that chunk (the same prefix, or one
that begins with it): otherwise it is interrupted, as if the prewarm had stopped at the chunk boundary before
it (counted with a chunk gate and a mid-prefill hook, not timed)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import FakeContext, fake_session
from gates import PREWARM_THREAD, Call, ChunkGate, stop_after, stop_asked, wait_until
from llamanode import (
    Config,
    ContextManifest,
    ContextOverflowError,
    DecodeConfig,
    InvalidInputError,
    KVSession,
    ManifestMismatchError,
    PrefixInput,
    PrewarmReport,
    SessionClosedError,
    SessionFatalError,
)
from llamanode.snapshot import build_header

BATCH = 8
P = (("system", "s" * 20), ("file", "abcdefgh" * 8), ("tail", "t" * 12))  # 96 tokens: 12 chunks
Q = (("system", "s" * 20), ("file", "abcdXfgh" * 8), ("tail", "t" * 12))  # differs from byte 24
DECODE = DecodeConfig(max_tokens=12)


def answer(session: KVSession) -> tuple[int, ...]:
    session.prefill_suffix(session.suffix("go:"))
    return tuple(t for chunk in session.decode(DECODE) for t in chunk.token_ids)


def cold(segments: tuple[tuple[str, str], ...]) -> tuple[int, ...]:
    session, _ = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(segments))
    return answer(session)


def exact(ctx: FakeContext) -> None:
    """The batch rule held for every prefill, whoever ran it."""
    assert ctx.small_batches_after_start() == [], "a prefill micro-batch of one token after position 0"
    assert all(b.size <= BATCH for b in ctx.batches)


def gated(segments: tuple[tuple[str, str], ...] | None = None) -> tuple[KVSession, FakeContext, ChunkGate]:
    session, ctx = fake_session(num_batch=BATCH)
    if segments is not None:
        session.ensure_prefix(session.prefix(segments))
    return session, ctx, ChunkGate(ctx)


def test_a_prewarm_left_alone_completes_and_the_next_ensure_prefix_is_a_byte_hash_hit() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    prefix = session.prefix(P)
    report = session.prewarm(prefix).wait(10)
    assert (report.outcome, report.by, report.prefix_tokens, report.prefilled_tokens) == ("completed", None, 96, 96)
    assert report.status is not None and report.status.divergence is not None
    assert report.status.divergence.cause == "cold"
    status = session.ensure_prefix(prefix)
    assert status.byte_hash_hit and (status.reused_tokens, status.prefilled_tokens) == (96, 0)
    assert session.explain_context().last_prewarm == report
    assert answer(session) == cold(P)
    exact(ctx)


def test_ensure_prefix_of_the_same_prefix_joins_after_the_chunk_in_flight() -> None:
    session, ctx, gate = gated(P)
    answer(session)
    handle = session.prewarm(session.prefix(Q))
    call = stop_after(gate, handle, 3, lambda: session.ensure_prefix(session.prefix(Q)))
    status = call.outcome()
    # three, then the one in flight when the call came (not interrupted: the call needs it); none after
    assert gate.prewarm_chunks() == 4 and ctx.interrupted_prefills == 0
    report = handle.wait(1)
    assert (report.outcome, report.by) == ("joined", "ensure_prefix")
    # the prewarm kept the 24 tokens before the edit and prefilled 4 chunks; the call prefilled the rest
    assert (report.prefix_tokens, report.reused_tokens, report.prefilled_tokens) == (96, 24, 32)
    assert (status.reused_tokens, status.prefilled_tokens, status.prefix_tokens) == (56, 40, 96)
    assert status.divergence is not None and status.divergence.cause == "resumed"
    assert status.divergence.token_index == 56 and status.divergence.segment == "file"
    assert session.explain_context().last_prewarm == report
    assert answer(session) == cold(Q)
    exact(ctx)


def test_ensure_prefix_of_another_prefix_cancels_and_reuses_what_matches() -> None:
    session, ctx, gate = gated()
    handle = session.prewarm(session.prefix(P))
    other = (("system", "s" * 20), ("file", "abcdefgh" * 2 + "Z" * 50))  # shares 36 tokens with P
    call = stop_after(gate, handle, 5, lambda: session.ensure_prefix(session.prefix(other)))
    status = call.outcome()
    assert gate.prewarm_chunks() == 5
    assert (handle.wait(1).outcome, handle.wait(1).by, handle.wait(1).prefilled_tokens) == (
        "cancelled",
        "ensure_prefix",
        40,
    )
    assert (status.reused_tokens, status.prefilled_tokens) == (36, 50)
    assert status.divergence is not None and status.divergence.cause == "edited"
    assert answer(session) == cold(other)
    exact(ctx)


@pytest.mark.parametrize("call", ["prefill_suffix", "decode", "export_state", "reset", "cancel", "handle.cancel"])
def test_other_calls_cancel_it_between_chunks_and_leave_no_reusable_prefix(call: str) -> None:
    session, ctx, gate = gated(P)
    handle = session.prewarm(session.prefix(Q))
    calls: dict[str, Callable[[], Any]] = {
        "prefill_suffix": lambda: session.prefill_suffix(session.suffix("go:")),
        "decode": lambda: session.decode(DECODE),
        "export_state": session.export_state,
        "reset": session.reset,
        "cancel": session.cancel_prewarm,
        "handle.cancel": handle.cancel,
    }
    done = stop_after(gate, handle, 2, calls[call])
    if call in ("prefill_suffix", "decode", "export_state"):  # the prefix is unfinished: nothing to build on
        with pytest.raises((ManifestMismatchError, InvalidInputError)):
            done.outcome()
    else:
        done.outcome()
    report = handle.wait(1)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("cancelled", call.split(".")[-1], 16)
    assert gate.prewarm_chunks() == 2
    assert session.explain_context().manifest is None
    status = session.ensure_prefix(session.prefix(Q))
    if call != "reset":  # the unfinished prefill's tokens are reused; after a reset nothing is resident
        assert status.reused_tokens == 40 and status.divergence is not None
        assert status.divergence.cause == "resumed"
    assert answer(session) == cold(Q)
    exact(ctx)


def test_a_newer_prewarm_supersedes_the_older_at_once() -> None:
    session, ctx, gate = gated()
    first = session.prewarm(session.prefix(P))
    gate.run_chunks(2)
    second = session.prewarm(session.prefix(Q))
    wait_until(lambda: stop_asked(first))
    gate.allow(1)
    report = first.wait(10)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("superseded", "prewarm", 16)
    gate.open()
    newer = second.wait(10)
    assert newer.outcome == "completed" and newer.status is not None
    assert (newer.reused_tokens, newer.prefilled_tokens) == (16, 80)  # the older one's two chunks
    assert session.explain_context().last_prewarm == newer
    assert session.ensure_prefix(session.prefix(Q)).byte_hash_hit
    assert answer(session) == cold(Q)
    exact(ctx)


def test_a_prewarm_started_while_a_call_waits_for_the_session_goes_after_it() -> None:
    session, ctx, gate = gated()
    first = session.prewarm(session.prefix(P))
    gate.run_chunks(2)
    call = Call(lambda: session.ensure_prefix(session.prefix(Q)))
    wait_until(lambda: stop_asked(first))
    second = session.prewarm(session.prefix(P))  # the call asked first: this one must not slip in before it
    gate.allow(1)
    status = call.outcome()  # one permit was enough: the second prewarm waited
    assert (first.wait(1).outcome, first.wait(1).by) == ("cancelled", "ensure_prefix")
    assert (status.reused_tokens, status.prefilled_tokens) == (16, 80) and not second.done
    gate.open()
    assert second.wait(10).outcome == "completed"
    assert answer(session) == cold(P)
    exact(ctx)


def test_close_interrupts_it_and_the_context_is_never_touched_after() -> None:
    session, ctx, gate = gated(P)
    handle = session.prewarm(session.prefix(Q))
    call = stop_after(gate, handle, 2, session.close)
    call.outcome()
    report = handle.wait(1)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("interrupted", "close", 16)
    assert ctx.closed and gate.prewarm_chunks() == 2
    assert not any(t.name == PREWARM_THREAD for t in threading.enumerate())
    with pytest.raises(SessionClosedError):
        session.prewarm(session.prefix(P))


def test_a_prewarm_waiting_for_the_session_ends_at_once_without_touching_it() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    session.prefill_suffix(session.suffix("go:"))
    stream = session.decode(DECODE)
    next(stream)  # this thread holds the session while the stream is open
    batches = len(ctx.batches)
    handle = session.prewarm(session.prefix(Q))
    report = handle.cancel()  # the prewarm waits for the session: cancelling it waits for nothing
    assert (report.outcome, report.by, report.prefix_tokens) == ("cancelled", "cancel", None)
    assert report.prefilled_tokens == 0
    for _ in stream:
        pass
    wait_until(lambda: not any(t.name == PREWARM_THREAD for t in threading.enumerate()))
    assert all(b.kind == "step" for b in ctx.batches[batches:])  # the stream's decode steps, no prefill
    assert session.explain_context().manifest is not None and session.explain_context().prefix_tokens == 96


def test_decode_cancels_a_prewarm_in_its_first_chunk() -> None:
    session, _, gate = gated(P)
    handle = session.prewarm(session.prefix(Q))
    gate.run_chunks(0)  # the prewarm has tokenized and trimmed; its first chunk is in flight
    call = Call(lambda: session.decode(DECODE))
    wait_until(lambda: stop_asked(handle))
    gate.allow(1)
    with pytest.raises(InvalidInputError):  # the prewarm had trimmed to its common prefix
        call.outcome()
    assert handle.wait(1).prefilled_tokens == 0 and gate.prewarm_chunks() == 0


def test_a_refused_prewarm_raises_in_the_caller_and_changes_nothing() -> None:
    session, _ = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    other_model = PrefixInput("x", ContextManifest("other", "t" * 64, "r" * 64, "p" * 64, False))
    with pytest.raises(ManifestMismatchError):
        session.prewarm(other_model)
    with pytest.raises(InvalidInputError):
        session.prewarm(PrefixInput("\ud800", session.manifest()))
    assert session.explain_context().last_prewarm is None


def test_an_overflowing_prewarm_fails_before_changing_anything() -> None:
    session, _ = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    report = session.prewarm(session.prefix((("big", "x" * 300),))).wait(10)
    assert report.outcome == "failed" and report.by is not None and report.by.startswith("ContextOverflowError")
    assert session.explain_context().prefix_tokens == 96 and not session.explain_context().fatal
    assert answer(session) == cold(P)
    with pytest.raises(ContextOverflowError):
        session.ensure_prefix(session.prefix((("big", "x" * 300),)))


def test_an_unexpected_failure_is_reported_and_leaves_nothing_reusable() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    real_prefill, calls = ctx.prefill, []

    def broken(tokens: list[int], start: int) -> None:
        calls.append(start)
        if len(calls) == 3:
            raise RuntimeError("native bug")
        real_prefill(tokens, start)

    ctx.prefill = broken  # type: ignore[method-assign]
    report = session.prewarm(session.prefix(Q)).wait(10)  # no exception escapes the thread (pytest would say)
    assert (report.outcome, report.by) == ("failed", "RuntimeError: native bug")
    assert session.explain_context().fatal
    with pytest.raises(SessionFatalError, match="a prewarm failed unexpectedly"):
        session.ensure_prefix(session.prefix(Q))


def test_explain_context_shows_a_running_prewarm() -> None:
    session, _, gate = gated()
    handle = session.prewarm(session.prefix(P))
    gate.run_chunks(2)
    running = session.explain_context().last_prewarm
    assert running is not None
    assert (running.outcome, running.by, running.prefilled_tokens, running.prefix_tokens) == ("running", None, 16, 96)
    assert session.prewarming and not handle.done
    gate.open()
    assert handle.wait(10).outcome == "completed" and not session.prewarming


def test_done_callbacks_get_the_final_report_and_may_use_the_session(caplog: pytest.LogCaptureFixture) -> None:
    session, _, gate = gated()
    handle = session.prewarm(session.prefix(P))
    seen: list[object] = []

    def broken(report: PrewarmReport) -> None:
        raise RuntimeError("a bug in a callback")

    handle.add_done_callback(seen.append)
    handle.add_done_callback(broken)
    handle.add_done_callback(lambda report: seen.append(session.ensure_prefix(session.prefix(P)).byte_hash_hit))
    gate.open()
    final = handle.wait(10)  # callbacks have run when wait() returns
    assert seen == [final, True]
    assert "a prewarm done-callback failed" in caplog.text and "a bug in a callback" in caplog.text
    handle.add_done_callback(seen.append)  # already ended: called at once
    assert seen == [final, True, final]


TEXTS = st.text(alphabet="ab\n", min_size=1, max_size=60)


@settings(max_examples=40)
@given(
    first=TEXTS,
    second=TEXTS,
    shared=st.integers(0, 60),
    chunks=st.integers(0, 6),
    how=st.sampled_from(["join", "other", "supersede", "suffix"]),
)
def test_wherever_a_prewarm_stops_the_session_answers_like_a_cold_one(
    first: str, second: str, shared: int, chunks: int, how: str
) -> None:
    base = (("sys", "s" * 10), ("a", first))
    target = (("sys", "s" * 10), ("a", first[:shared] + second))
    session, ctx, gate = gated(base)
    answer(session)
    handle = session.prewarm(session.prefix(target))
    gate.allow(chunks)
    if how == "supersede":
        session.prewarm(session.prefix(base))
        gate.open()
        session.ensure_prefix(session.prefix(base))
    else:
        fn = {
            "join": lambda: session.ensure_prefix(session.prefix(target)),
            "other": lambda: session.ensure_prefix(session.prefix(base)),
            "suffix": lambda: session.prefill_suffix(session.suffix("go:")),
        }[how]
        call = Call(fn)
        wait_until(lambda: stop_asked(handle))
        gate.open()
        try:
            call.outcome()
        except (ManifestMismatchError, InvalidInputError):  # prefill_suffix on the unfinished prefix
            assert how == "suffix" and handle.wait(1).outcome == "cancelled"
        if how == "suffix":
            session.ensure_prefix(session.prefix(target))
    final = target if how in ("join", "suffix") else base
    assert handle.wait(10).outcome in ("joined", "completed", "cancelled", "superseded")
    assert answer(session) == cold(final)
    exact(ctx)


def test_a_prewarm_prefills_in_chunks_of_prewarm_batch_and_calls_in_chunks_of_num_batch() -> None:
    ctx = FakeContext(n_ctx=256, n_batch=BATCH, n_ubatch=BATCH)
    session = KVSession(ctx, Config(num_ctx=256, num_batch=BATCH, num_ubatch=BATCH, prewarm_batch=4))
    session.prewarm(session.prefix(P)).wait(10)
    assert {b.size for b in ctx.batches} == {4}  # 96 tokens: 24 chunks a call waits for at most one of
    ctx.batches.clear()
    session.ensure_prefix(session.prefix(Q))
    assert {b.size for b in ctx.batches} == {BATCH}
    assert answer(session) == cold(Q)


def test_settle_finishes_a_finish_prewarm_and_cancels_any_other() -> None:
    session, ctx, gate = gated(P)
    handle = session.prewarm(session.prefix(Q), finish=True)
    call = stop_after(gate, handle, 1, lambda: session.settle_prewarm("fork"))
    report = call.outcome()
    assert report is not None and (report.outcome, report.by) == ("joined", "ensure_prefix")
    context = session.explain_context()
    assert context.manifest is not None and context.prefix_tokens == 96  # Q is resident, complete
    assert answer(session) == cold(Q)
    plain = session.prewarm(session.prefix(P))
    report = stop_after(gate, plain, 1, lambda: session.settle_prewarm("fork")).outcome()
    assert report is not None and (report.outcome, report.by) == ("cancelled", "fork")
    assert session.explain_context().manifest is None  # an unfinished prefill, as a cancel leaves it
    exact(ctx)


def test_an_approximate_prewarm_joined_halfway_runs_to_its_end_and_keeps_what_it_reused() -> None:
    """Stopped halfway an approximate prefill keeps only the exact prefix; so the call waits for its end."""
    ctx = FakeContext(n_ctx=256, n_batch=BATCH, n_ubatch=BATCH)
    config = Config(num_ctx=256, num_batch=BATCH, num_ubatch=BATCH, approximate_reuse="boundary", approximate_share=0.5)
    session = KVSession(ctx, config)  # recomputes half of what it keeps: several chunks
    before = (("system", "s" * 20), ("file", "abcdefgh" * 8), ("tail", "t" * 40))
    edited = (("system", "s" * 20), ("file", "abcdefgh" * 4 + "abcdXfgh" + "abcdefgh" * 3), ("tail", "t" * 40))
    session.ensure_prefix(session.prefix(before))
    gate = ChunkGate(ctx)
    handle = session.prewarm(session.prefix(edited))
    gate.run_chunks(1)
    call = Call(lambda: session.ensure_prefix(session.prefix(edited)))
    wait_until(lambda: handle.report().by == "ensure_prefix")  # the call waits for the prewarm's end
    gate.open()
    status = call.outcome()
    report = handle.wait(10)
    assert (report.outcome, report.by) == ("completed", "ensure_prefix")
    assert report.status is not None and report.status.approximation is not None
    assert report.status.approximation.reused_tokens > 0  # the edit's tail kept its KV, shifted
    assert status.byte_hash_hit and status.prefilled_tokens == 0


# -- interrupts: a stop lands in the middle of a chunk (the fake's mid_prefill hook), not at the gate ----------


class MidChunk:
    """Installed before the prewarm starts: during its chunk-th prefill (cells computed, the prefill not
    returned yet) it makes the call given to call() in a thread of its own, and waits until asked() says the
    call has reached the prewarm; then the prefill goes on (the fake raises if it was interrupted)."""

    def __init__(self, ctx: FakeContext, chunk: int) -> None:
        self._ctx, self._chunk, self._seen = ctx, chunk, 0
        self._ready = threading.Event()
        self._fn: Callable[[], Any] = lambda: None
        self._asked: Callable[[], bool] = lambda: True
        self.calls: list[Call] = []
        ctx.mid_prefill = self._hook

    def call(self, fn: Callable[[], Any], asked: Callable[[], bool]) -> None:
        self._fn, self._asked = fn, asked
        self._ready.set()

    def outcome(self) -> Any:
        wait_until(lambda: bool(self.calls), 10, what="the chunk was never reached")
        self._ctx.mid_prefill = None
        return self.calls[0].outcome()

    def _hook(self, start: int, size: int) -> None:
        if threading.current_thread().name != PREWARM_THREAD:
            return
        self._seen += 1
        if self._seen == self._chunk:
            assert self._ready.wait(10)
            self.calls.append(Call(self._fn))
            wait_until(self._asked, 10, what="the call did not reach the prewarm")


def resident_matches_context(session: KVSession, ctx: FakeContext) -> None:
    assert [cell[0] for cell in ctx.kv if cell is not None] == list(session.resident_tokens())
    assert None not in ctx.kv


def test_a_cancel_mid_chunk_drops_that_chunk_and_leaves_the_previous_boundary() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    mid = MidChunk(ctx, 4)
    handle = session.prewarm(session.prefix(Q))
    mid.call(handle.cancel, lambda: ctx.interrupted)
    assert mid.outcome().outcome == "cancelled"
    report = handle.wait(1)
    assert (report.outcome, report.by, report.reused_tokens, report.prefilled_tokens) == ("cancelled", "cancel", 24, 24)
    assert ctx.interrupted_prefills == 1 and not ctx.armed  # disarmed once the prewarm let go
    assert len(session.resident_tokens()) == 48  # 24 kept + 3 chunks: the 4th left nothing
    resident_matches_context(session, ctx)
    assert session.explain_context().manifest is None  # an unfinished prefill, as a stop between chunks leaves
    status = session.ensure_prefix(session.prefix(Q))
    assert (status.reused_tokens, status.prefilled_tokens) == (48, 48)
    assert answer(session) == cold(Q)
    exact(ctx)


@pytest.mark.parametrize("longer", [False, True])
def test_a_call_that_needs_the_chunk_in_flight_lets_it_finish(longer: bool) -> None:
    """The same prefix (a join), or one that begins with it (the next turn's): dropping the chunk would make
    the call prefill all of it again, so it waits for the rest of it."""
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    target = (*Q, ("next", "ab" * 4)) if longer else Q
    mid = MidChunk(ctx, 5)
    handle = session.prewarm(session.prefix(Q))
    mid.call(lambda: session.ensure_prefix(session.prefix(target)), lambda: stop_asked(handle))
    status = mid.outcome()
    report = handle.wait(1)
    assert (report.outcome, report.prefilled_tokens) == ("joined" if longer is False else "cancelled", 40)
    assert ctx.interrupted_prefills == 0  # chunk 5 was kept
    assert (status.reused_tokens, status.prefilled_tokens) == (64, 32 + 8 * longer)
    assert answer(session) == cold(target)
    exact(ctx)


def test_a_newer_prewarm_of_a_longer_prefix_keeps_the_chunk_in_flight() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    mid = MidChunk(ctx, 2)
    first = session.prewarm(session.prefix(Q))
    longer = (*Q, ("next", "ab" * 4))
    mid.call(lambda: session.prewarm(session.prefix(longer)), lambda: stop_asked(first))
    second = mid.outcome()
    assert (first.wait(10).outcome, first.wait(1).prefilled_tokens) == ("superseded", 16)
    assert second.wait(10).outcome == "completed" and ctx.interrupted_prefills == 0
    assert answer(session) == cold(longer)


def test_after_an_interrupt_the_last_logits_are_not_trusted() -> None:
    """An aborted decode drops the context's last logits (llama.cpp resets its outputs when a decode begins):
    a prefix that is exactly the resident tokens of the interrupted prefill refreshes them before decoding."""
    session, ctx = fake_session(num_batch=BATCH)
    mid = MidChunk(ctx, 5)
    handle = session.prewarm(session.prefix(Q))
    mid.call(handle.cancel, lambda: ctx.interrupted)
    assert mid.outcome().prefilled_tokens == 32
    exactly = (("system", "s" * 20), ("file", "abcdXfghabcd"))  # Q's first 32 tokens
    status = session.ensure_prefix(session.prefix(exactly))
    assert (status.reused_tokens, status.prefilled_tokens) == (32, 0)
    fresh, _ = fake_session(num_batch=BATCH)
    fresh.ensure_prefix(fresh.prefix(exactly))
    tokens = [t for chunk in session.decode(DECODE) for t in chunk.token_ids]  # no suffix: the prefix's logits
    assert tokens == [t for chunk in fresh.decode(DECODE) for t in chunk.token_ids]


def test_an_interrupt_between_chunks_is_not_lost() -> None:
    session, ctx, gate = gated(P)
    batches = len(ctx.batches)
    handle = session.prewarm(session.prefix(Q))
    gate.run_chunks(2)  # the third chunk waits at the gate, before the context's prefill
    call = Call(handle.cancel)
    wait_until(lambda: ctx.interrupted)  # asked while no prefill runs: pending
    gate.allow(1)
    assert call.outcome().prefilled_tokens == 16
    assert ctx.interrupted_prefills == 1 and len(ctx.batches) == batches + 2  # the third was never decoded


def test_an_interrupt_outside_a_prewarms_chunks_does_nothing() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    ctx.interrupt()  # unarmed: nothing pending
    ctx.mid_prefill = lambda start, size: ctx.interrupt()  # and nothing during a foreground prefill
    session.ensure_prefix(session.prefix(P))
    assert answer(session) == cold(P)
    ctx.mid_prefill = None
    assert session.prewarm(session.prefix(Q)).wait(10).outcome == "completed"
    ctx.interrupt()  # disarmed again after the prewarm
    assert session.ensure_prefix(session.prefix(Q)).byte_hash_hit and answer(session) == cold(Q)
    assert ctx.interrupted_prefills == 0 and not ctx.armed and not ctx.interrupted


def test_settle_finishing_a_finish_prewarm_does_not_interrupt_its_chunk() -> None:
    session, ctx = fake_session(num_batch=BATCH)
    session.ensure_prefix(session.prefix(P))
    mid = MidChunk(ctx, 2)
    handle = session.prewarm(session.prefix(Q), finish=True)
    mid.call(lambda: session.settle_prewarm("fork"), lambda: stop_asked(handle))
    settled = mid.outcome()
    report = handle.wait(1)
    assert settled == report
    assert (report.outcome, report.by, report.prefilled_tokens) == ("joined", "ensure_prefix", 16)  # chunk 2 kept
    assert ctx.interrupted_prefills == 0 and session.explain_context().prefix_tokens == 96
    assert answer(session) == cold(Q)


def test_a_carry_on_prewarm_is_never_interrupted() -> None:
    ctx = FakeContext(n_ctx=256, n_batch=BATCH, n_ubatch=BATCH)
    config = Config(num_ctx=256, num_batch=BATCH, num_ubatch=BATCH, approximate_reuse="boundary")
    session = KVSession(ctx, config)
    mid = MidChunk(ctx, 3)
    handle = session.prewarm(session.prefix(P))  # cold: an exact prefill in chunks, carried on if joined
    mid.call(handle.cancel, lambda: stop_asked(handle))
    report = mid.outcome()
    assert (report.outcome, report.prefilled_tokens) == ("cancelled", 24)  # chunk 3 finished first
    assert ctx.interrupted_prefills == 0 and not ctx.armed
    assert session.ensure_prefix(session.prefix(P)).reused_tokens == 24
    assert answer(session) == cold(P)


def test_an_unfinished_prefill_is_exported_only_when_asked_and_never_written() -> None:
    """A fork's copy of a warm-next stopped halfway (stop_prewarm_for_copy): it resumes exactly elsewhere."""
    session, _, gate = gated(P)
    handle = session.prewarm(session.prefix(Q), finish=True)
    again = stop_after(gate, handle, 2, lambda: session.stop_prewarm_for_copy("fork")).outcome()
    assert again == session.prefix(Q) and (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "fork")
    with pytest.raises(InvalidInputError, match="nothing is resident"):
        session.export_state()
    state = session.export_state(unfinished=True)
    assert state.unfinished and state.manifest == again.manifest and len(state.tokens) == 24 + 2 * BATCH
    with pytest.raises(InvalidInputError, match="unfinished prefill is no state to write"):
        build_header("w", state, session.state_identity())
    copy, ctx = fake_session(num_batch=BATCH)
    copy.import_state(state)
    status = copy.ensure_prefix(copy.prefix(Q))
    assert (status.reused_tokens, status.prefilled_tokens) == (40, 56)
    assert status.divergence is not None and status.divergence.cause == "resumed"
    assert answer(copy) == cold(Q)
    exact(ctx)
    assert session.stop_prewarm_for_copy("fork") is None  # nothing runs: nothing to prewarm again


def test_a_prefill_cut_inside_the_suffix_counts_no_generated_tokens() -> None:
    """The warm-next case: the next prefix keeps the suffix and drops the decoded tokens; stopped halfway,
    every resident token came from a prefill (none is counted as generated)."""
    session, _, gate = gated(P)
    answer(session)
    assert session.explain_context().generated_tokens > 3  # more decoded tokens than the suffix has
    handle = session.prewarm(session.prefix((*P, ("turn", "go:" + "n" * 40))))
    stop_after(gate, handle, 1, handle.cancel).outcome()
    report = session.explain_context()
    assert report.resident_tokens == 96 + 3 + BATCH
    assert (report.generated_tokens, report.prefix_tokens) == (0, report.resident_tokens)
