"""SessionPool.prewarm on the toy backend: an evicted workspace is restored and prewarmed without a lease,
a lease joins or cancels it (its chunk in flight interrupted), eviction cancels it first, a lease of another
workspace pauses it (its chunk in flight interrupted, prefilled again after the lease), a new session's fork
copies what it has done and starts it again, and the stats count outcomes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import FakeBackend, fake_session
from gates import PREWARM_THREAD, Call, ChunkGate, gate_pool, stop_after, stop_asked, wait_until
from llamanode import Config, DecodeConfig, InvalidInputError, KVSession, SessionPool

MODEL = "/fake/model.gguf"
CFG = Config(num_ctx=200, num_batch=8, num_ubatch=8)  # padded to 208 by the toy backend
OLD = (("system", "s" * 20), ("file", "abcdefgh" * 8))  # 84 tokens
NEW = (("system", "s" * 20), ("file", "abcdXfgh" * 8))  # differs from token 24: 60 tokens (8 chunks) to prefill


def turn(session: KVSession, segments: tuple[tuple[str, str], ...]) -> list[int]:
    session.ensure_prefix(session.prefix(segments))
    session.prefill_suffix(session.suffix("go:"))
    return [t for c in session.decode(DecodeConfig(max_tokens=6)) for t in c.token_ids]


def cold(segments: tuple[tuple[str, str], ...]) -> list[int]:
    session, _ = fake_session(num_ctx=208, num_batch=8)
    return turn(session, segments)


def leased_turn(pool: SessionPool, workspace: str, segments: tuple[tuple[str, str], ...]) -> list[int]:
    with pool.session(workspace) as s:
        return turn(s, segments)


@pytest.fixture
def budget(backends: list[FakeBackend], tmp_path: Path) -> int:
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "probe") as probe:
        return probe.budget_for(1)


def gated(pool: SessionPool) -> Iterator[tuple[SessionPool, ChunkGate]]:
    """The pool with every context it opens gated, closed (gate opened first) at the end."""
    gate = gate_pool(pool)
    yield pool, gate
    gate.open()
    pool.close()


@pytest.fixture
def gated_pool(backends: list[FakeBackend], tmp_path: Path, budget: int) -> Iterator[tuple[SessionPool, ChunkGate]]:
    """A pool with room for one live workspace."""
    yield from gated(SessionPool(MODEL, CFG, store_dir=tmp_path / "store", memory_budget_bytes=budget))


@pytest.fixture
def roomy_pool(backends: list[FakeBackend], tmp_path: Path) -> Iterator[tuple[SessionPool, ChunkGate]]:
    """A pool without a memory budget: every workspace stays live."""
    yield from gated(SessionPool(MODEL, CFG, store_dir=tmp_path / "store"))


def test_a_prewarm_waits_while_another_workspace_is_leased(roomy_pool: tuple[SessionPool, ChunkGate]) -> None:
    pool, gate = roomy_pool
    gate.open()
    leased_turn(pool, "a", OLD)
    with pool.session("b") as b:
        handle = pool.prewarm("a", NEW)
        time.sleep(0.2)  # ample for the whole prewarm, were it not waiting
        assert gate.prewarm_chunks() == 0 and not handle.done
        turn(b, OLD)
    assert handle.wait(10).outcome == "completed"
    assert leased_turn(pool, "a", NEW) == cold(NEW)


def test_a_running_prewarm_pauses_while_another_workspace_is_leased(
    roomy_pool: tuple[SessionPool, ChunkGate], backends: list[FakeBackend]
) -> None:
    pool, gate = roomy_pool
    leased_turn(pool, "a", OLD)
    ctx = backends[-1].contexts[0]
    handle = pool.prewarm("a", NEW)
    gate.run_chunks(1)  # one chunk done, the next in flight
    with pool.session("b") as b:
        gate.open()  # the chunk in flight was interrupted by the lease: it waits for the lease to end
        wait_until(lambda: ctx.interrupted_prefills == 1)
        time.sleep(0.2)
        assert gate.prewarm_chunks() == 1 and not handle.done
        assert turn(b, OLD) == cold(OLD)
    report = handle.wait(10)
    assert (report.outcome, report.reused_tokens, report.prefilled_tokens) == ("completed", 24, 60)
    assert gate.prewarm_chunks() == 8 and ctx.interrupted_prefills == 1  # the interrupted chunk, once more
    assert leased_turn(pool, "a", NEW) == cold(NEW)


@pytest.mark.parametrize("join", [False, True])
def test_a_lease_of_another_workspace_interrupts_a_prewarm_mid_chunk_and_it_resumes_after(
    roomy_pool: tuple[SessionPool, ChunkGate], backends: list[FakeBackend], join: bool
) -> None:
    pool, gate = roomy_pool
    gate.open()
    leased_turn(pool, "a", OLD)
    leased_turn(pool, "b", OLD)
    ctx = backends[-1].contexts[0]
    leased, release = threading.Event(), threading.Event()

    def lease_b() -> None:
        with pool.session("b"):
            leased.set()
            release.wait(10)

    def mid_chunk(start: int, size: int) -> None:  # a's third prewarm chunk: b is leased meanwhile
        if threading.current_thread().name == PREWARM_THREAD and start == 40:
            ctx.mid_prefill = None
            Call(lease_b)
            wait_until(lambda: ctx.interrupted, 10)

    ctx.mid_prefill = mid_chunk
    handle = pool.prewarm("a", NEW)
    assert leased.wait(10)
    wait_until(lambda: ctx.interrupted_prefills == 1)
    time.sleep(0.1)
    assert not handle.done and handle.report().prefilled_tokens == 16  # two chunks; the third dropped, waiting
    assert len(ctx.kv) == 40 and ctx.positions() == list(range(40))
    if join:  # while b is still leased: a's own call takes over from the last whole chunk
        assert leased_turn(pool, "a", NEW) == cold(NEW)
        report = handle.wait(1)
        assert (report.outcome, report.by, report.prefilled_tokens) == ("joined", "ensure_prefix", 16)
        with pool.session("a") as s:
            last = s.explain_context().last_prefix
            assert last is not None and (last.reused_tokens, last.prefilled_tokens) == (40, 44)
    release.set()
    report = handle.wait(10)
    if not join:
        assert (report.outcome, report.reused_tokens, report.prefilled_tokens) == ("completed", 24, 60)
        assert leased_turn(pool, "a", NEW) == cold(NEW)
    assert all(b.size <= 8 for b in ctx.batches) and ctx.small_batches_after_start() == []


def test_an_evicted_workspace_is_restored_prewarmed_and_joined_by_its_next_lease(
    gated_pool: tuple[SessionPool, ChunkGate],
) -> None:
    pool, gate = gated_pool
    leased_turn(pool, "a", OLD)
    leased_turn(pool, "b", OLD)  # evicts a
    handle = pool.prewarm("a", NEW)  # restores a (evicting b) and returns at once
    stats = pool.stats()
    assert (stats.prewarms, stats.restores, stats.live_workspaces) == (1, 1, 1)
    call = stop_after(gate, handle, 3, lambda: leased_turn(pool, "a", NEW))
    assert call.outcome() == cold(NEW)
    report = handle.wait(1)
    assert (report.outcome, report.by) == ("joined", "ensure_prefix")
    assert (report.reused_tokens, report.prefilled_tokens) == (24, 32)  # the chunk in flight was needed: kept
    with pool.session("a") as s:
        last = s.explain_context().last_prefix
        assert last is not None and (last.reused_tokens, last.prefilled_tokens) == (56, 28)
    assert pool.stats().prewarm_outcomes == {"joined": 1}


def test_a_lease_that_leaves_the_session_alone_leaves_the_prewarm_running(
    gated_pool: tuple[SessionPool, ChunkGate],
) -> None:
    pool, gate = gated_pool
    leased_turn(pool, "a", OLD)
    handle = pool.prewarm("a", NEW)
    gate.run_chunks(1)
    with pool.session("a") as s:
        assert s.explain_context().last_prewarm is not None
    assert not handle.done and handle.report().by is None
    gate.open()
    assert handle.wait(10).outcome == "completed"
    assert leased_turn(pool, "a", NEW) == cold(NEW)
    assert pool.stats().prewarm_outcomes == {"completed": 1}


def test_eviction_cancels_a_prewarm_and_the_workspace_keeps_its_last_written_state(
    gated_pool: tuple[SessionPool, ChunkGate],
) -> None:
    pool, gate = gated_pool
    leased_turn(pool, "a", OLD)
    pool.checkpoint("a")
    handle = pool.prewarm("a", NEW)
    call = stop_after(gate, handle, 2, lambda: leased_turn(pool, "b", OLD))  # b needs a's room
    assert call.outcome() == cold(OLD)
    report = handle.wait(1)
    assert (report.outcome, report.by, report.prefilled_tokens) == ("cancelled", "eviction", 16)
    assert gate.prewarm_chunks() == 2
    stats = pool.stats()
    assert (stats.evictions, stats.prewarm_outcomes, stats.misses) == (1, {"cancelled": 1}, 2)  # a, b were new
    with pool.session("a") as s:  # the state written before the prewarm, restored exactly
        status = s.ensure_prefix(s.prefix(OLD))
        assert status.byte_hash_hit
    assert leased_turn(pool, "a", NEW) == cold(NEW)


def test_a_new_workspace_evicted_mid_prewarm_starts_cold_and_says_why(
    gated_pool: tuple[SessionPool, ChunkGate],
) -> None:
    pool, gate = gated_pool
    handle = pool.prewarm("c", OLD)
    stop_after(gate, handle, 2, lambda: leased_turn(pool, "b", OLD)).outcome()
    assert handle.wait(1).outcome == "cancelled"
    with pool.session("c") as s:
        divergence = s.explain_context().last_divergence
        assert divergence is not None and "unfinished" in divergence.detail
    misses = pool.stats().recent_misses
    assert [(m.workspace_id, m.reason) for m in misses] == [("c", "new"), ("b", "new"), ("c", "unfinished")]
    assert leased_turn(pool, "c", OLD) == cold(OLD)


def test_a_prewarming_workspace_is_evicted_after_idle_ones(
    backends: list[FakeBackend], tmp_path: Path, budget: int
) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        two = probe.budget_for(2)
    pool = SessionPool(MODEL, CFG, store_dir=tmp_path / "store", memory_budget_bytes=two)
    gate = gate_pool(pool)
    try:
        handle = pool.prewarm("a", OLD)  # least recently used, but prewarming
        gate.run_chunks(1)
        leased_turn(pool, "c", OLD)
        leased_turn(pool, "b", OLD)  # room for b: c goes, although a was used before it
        live = {w.id for w in pool.workspaces() if w.live}
        assert live == {"a", "b"} and not handle.done and not stop_asked(handle)
        gate.open()
        assert handle.wait(10).outcome == "completed"
    finally:
        gate.open()
        pool.close()


def test_checkpoint_and_fork_cancel_a_prewarm_first(gated_pool: tuple[SessionPool, ChunkGate]) -> None:
    pool, gate = gated_pool
    leased_turn(pool, "a", OLD)
    handle = pool.prewarm("a", NEW)
    stop_after(gate, handle, 1, lambda: pool.checkpoint("a")).outcome()
    assert (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "checkpoint")
    assert pool.stats().snapshots_written == 0  # an unfinished prefill is no state to write
    leased_turn(pool, "a", NEW)
    second = pool.prewarm("a", OLD)
    # the fork comes while the first chunk is in flight (before it, the prewarm would end having done nothing)
    call = stop_after(gate, second, 0, lambda: pool.fork("a", "a2"))
    with pytest.raises(InvalidInputError, match="unfinished prefill: nothing to fork"):
        call.outcome()
    assert (second.wait(1).outcome, second.wait(1).by) == ("cancelled", "fork")
    assert {w.id for w in pool.workspaces()} == {"a"} and pool.stats().evictions == 0
    assert leased_turn(pool, "a", OLD) == cold(OLD)


def test_closing_the_pool_cancels_a_prewarm_and_keeps_the_last_complete_state(
    backends: list[FakeBackend], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    pool = SessionPool(MODEL, CFG, store_dir=store)
    gate = gate_pool(pool)
    leased_turn(pool, "a", OLD)
    pool.checkpoint("a")
    handle = pool.prewarm("a", NEW)
    stop_after(gate, handle, 2, pool.close).outcome()
    assert (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "pool close")
    with SessionPool(MODEL, CFG, store_dir=store) as reopened, reopened.session("a") as s:
        assert s.ensure_prefix(s.prefix(OLD)).byte_hash_hit
        assert turn(s, NEW) == cold(NEW)


def test_a_fork_or_eviction_finishes_a_finish_prewarm_so_no_state_is_lost(
    gated_pool: tuple[SessionPool, ChunkGate],
) -> None:
    """The server's warm-next: a prewarm started inside a lease with finish=True; what needs a complete
    state finishes it instead of leaving an unfinished prefill (nothing to fork, nothing to write)."""
    pool, gate = gated_pool
    with pool.session("a") as s:
        turn(s, OLD)
        handle = s.prewarm(s.prefix(NEW), finish=True)
    origin = stop_after(gate, handle, 1, lambda: pool.fork("a", "a2")).outcome()
    assert handle.wait(1).outcome == "joined" and origin.copied_tokens == 84
    assert leased_turn(pool, "a2", NEW) == cold(NEW)
    with pool.session("a") as s:  # a was evicted for a2: its written state is the finished prefix
        assert s.explain_context().prefix_tokens == 84
        handle = s.prewarm(s.prefix(OLD), finish=True)
    stop_after(gate, handle, 1, lambda: leased_turn(pool, "b", OLD)).outcome()  # evicts a
    assert handle.wait(1).outcome == "joined"
    with pool.session("a") as s:
        status = s.ensure_prefix(s.prefix(OLD))
        assert status.reused_tokens == 84 and status.prefilled_tokens == 0


def test_a_new_sessions_fork_copies_what_a_finish_prewarm_has_done_and_the_prewarm_goes_on(
    roomy_pool: tuple[SessionPool, ChunkGate],
) -> None:
    """A new session forking a workspace whose warm-next still runs (fork_nearest) takes the chunks done so
    far, an unfinished prefill, instead of waiting for the rest; the source prewarms the rest again."""
    pool, gate = roomy_pool
    with pool.session("a") as s:
        turn(s, OLD)
        handle = s.prewarm(s.prefix(NEW), finish=True)
        prompt, source = s.tokenize(s.prefix(NEW).text), s
    origin = stop_after(gate, handle, 2, lambda: pool.fork_nearest("b", prompt, 8)).outcome()
    assert (handle.wait(1).outcome, handle.wait(1).by) == ("cancelled", "fork")
    assert origin is not None and (origin.source, origin.copied_tokens, origin.shared_tokens) == ("a", 40, 24)
    with pool.session("b") as b:  # the source's prewarm waits meanwhile (a lease of another workspace)
        status = b.ensure_prefix(b.prefix(NEW))
        assert (status.reused_tokens, status.prefilled_tokens) == (40, 44)
        b.prefill_suffix(b.suffix("go:"))
        assert [t for c in b.decode(DecodeConfig(max_tokens=6)) for t in c.token_ids] == cold(NEW)
    gate.open()
    wait_until(lambda: not source.prewarming, 10)  # outside a lease: a lease holds every prewarm back
    with pool.session("a") as s:
        report = s.explain_context().last_prewarm
        assert report is not None and (report.outcome, report.reused_tokens, report.prefilled_tokens) == (
            "completed",
            40,
            44,
        )
        assert s.ensure_prefix(s.prefix(NEW)).byte_hash_hit
    assert leased_turn(pool, "a", NEW) == cold(NEW)


def test_a_lease_that_starts_a_prewarm_still_records_its_state_for_routing(
    roomy_pool: tuple[SessionPool, ChunkGate],
) -> None:
    pool, _ = roomy_pool
    with pool.session("a") as s:
        turn(s, OLD)
        tokens, report = list(s.resident_tokens()), s.explain_context()
        s.prewarm(s.prefix(NEW), finish=True)  # waits for the lease's end: nothing changed yet
    assert pool.longest_prefix(tokens, 8) == ("a", report.resident_tokens - report.generated_tokens)
