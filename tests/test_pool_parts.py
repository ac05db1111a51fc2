"""The pool's parts on their own, and the pool over the toy backend: fast checks of each seam."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fakes import FAKE_KV_PER_TOKEN, FAKE_PAD, FakeBackend, fake_session
from gates import wait_until
from llamanode import Config, DecodeConfig, InvalidInputError, SessionPool, SnapshotError
from llamanode.kvsession import KVSession
from llamanode.pool.held import HeldState
from llamanode.pool.kept import KeptStates
from llamanode.pool.ledger import MemoryLedger, Sizes
from llamanode.pool.source import Source, state_source
from llamanode.pool.stats import StatsRecorder
from llamanode.pool.workspace import Workspace
from llamanode.pool.writer import SnapshotWriter
from llamanode.server.schemas import WORKSPACE_ID_PATTERN as SERVER_PATTERN
from llamanode.store import SnapshotEntry, SnapshotStore
from llamanode.workspace_id import WORKSPACE_ID_PATTERN

MODEL = "/fake/model.gguf"
CFG = Config(num_ctx=200, num_batch=8, num_ubatch=8)  # padded to 208 by the toy backend
WRITERS = "llamanode-snapshot-writer"


def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == WRITERS)


def turn(session: KVSession, text: str, n: int = 6) -> list[int]:
    session.ensure_prefix(session.prefix((("system", text),)))
    session.prefill_suffix(session.suffix("go:"))
    return [t for c in session.decode(DecodeConfig(max_tokens=n)) for t in c.token_ids]


def cold(text: str, n: int = 6) -> list[int]:
    session, _ = fake_session(num_ctx=208, num_batch=8)
    return turn(session, text, n)


# -- the ledger --------------------------------------------------------------------------------------
def test_sizes_follow_the_backend_padding_and_estimates() -> None:
    sizes = Sizes.of(16.0, 208)
    assert sizes.session_bytes == 16 * 208
    assert sizes.headroom == 3 * sizes.state_estimate(208)
    assert sizes.budget_for(2) == 2 * sizes.session_bytes + sizes.headroom
    assert sizes.state_estimate(10) > sizes.state_estimate(9) > 16 * 9


def test_the_ledger_hands_out_reservations_and_wakes_waiters_when_they_shrink() -> None:
    cv = threading.Condition(threading.RLock())
    sizes = Sizes(per_token=1.0, n_ctx=10, session_bytes=100)
    ledger = MemoryLedger(cv, sizes, budget=sizes.headroom + 150)
    assert ledger.fits(100, "session") and not ledger.fits(151, "session")
    assert ledger.account(100, "session") is None and ledger.kv_live == 100
    reservation = ledger.account(40, "buffer")
    assert reservation is not None and ledger.buffers == 40 and ledger.live_bytes() == 140
    reservation.resize(70)
    assert ledger.buffers == 70 and ledger.peak == 170
    woke = threading.Event()

    def waiter() -> None:
        with cv:
            while ledger.buffers:
                cv.wait(timeout=5)
            woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    reservation.release()
    thread.join(5)
    assert woke.is_set() and ledger.buffers == 0 and reservation.nbytes == 0
    ledger.free_session(100)
    assert ledger.live_bytes() == 0 and ledger.peak == 170


# -- where a state comes from -------------------------------------------------------------------------
def _held(ledger: MemoryLedger, text: str = "abcdef") -> HeldState:
    session, _ = fake_session()
    session.ensure_prefix(session.prefix((("s", text),)))
    state = session.export_state()
    reservation = ledger.account(100, "buffer")
    assert reservation is not None
    return HeldState(state, session.state_identity(), reservation, (state.tokens, state.prefix_len, state.generated))


def _entry(workspace_id: str) -> SnapshotEntry:
    return SnapshotEntry(workspace_id, "f.snap", 10, 1, 1, "key", "m", "b", "{}", 0.0, 0.0, (5,), ("c",))


def test_state_source_prefers_live_then_pending_then_kept_then_disk() -> None:
    ledger = MemoryLedger(threading.Condition(threading.RLock()), Sizes.of(16.0, 256), None)
    held = _held(ledger)
    source_session, _ = fake_session()
    into, _ = fake_session()
    ws = Workspace("a", session=source_session, snapshot=_entry("a"))
    assert state_source(ws, into, held, held) is Source.LIVE  # a fork copies the source's live context
    ws.session = into  # a restore: the workspace's own session is the empty one being filled
    assert state_source(ws, into, held, held) is Source.PENDING
    assert state_source(ws, into, None, held) is Source.KEPT
    assert state_source(ws, into, None, None) is Source.DISK
    ws.snapshot = None
    assert state_source(ws, into, None, None) is Source.COLD


def test_a_kept_state_is_usable_only_while_it_is_what_the_snapshot_holds() -> None:
    ledger = MemoryLedger(threading.Condition(threading.RLock()), Sizes.of(16.0, 256), None)
    kept = KeptStates()
    held = _held(ledger)
    ws = Workspace("a", snapshot=_entry("a"), snapshot_signature=held.signature)
    kept.keep("a", held)
    assert kept.usable(ws) is held and len(kept) == 1 and kept.nbytes() == 100
    ws.snapshot_signature = ((1, 2), 2, 0)  # a newer snapshot
    assert kept.usable(ws) is None
    assert kept.take(ws) is None and len(kept) == 0 and ledger.buffers == 0  # the stale copy was freed
    other = _held(ledger)
    kept.keep("b", other)
    assert not kept.drop_one(lambda workspace_id: False)  # leased: never dropped for room
    assert kept.drop_one(lambda workspace_id: True) and ledger.buffers == 0


# -- the writer ----------------------------------------------------------------------------------------
class Host:
    """A WriterHost that records what the writer reports."""

    def __init__(self) -> None:
        self.busy = False
        self.reports: list[tuple[str, bool, int]] = []
        self.collected_ids: list[str] = []

    def turn_running(self) -> bool:
        return self.busy

    def in_use(self) -> set[str]:
        return set()

    def keep_order(self) -> list[str]:
        return []

    def written(self, workspace_id: str, held: HeldState, entry: SnapshotEntry, current: bool) -> None:
        self.reports.append((workspace_id, current, entry.n_tokens))
        held.reservation.release()

    def collected(self, workspace_ids: Sequence[str]) -> None:
        self.collected_ids.extend(workspace_ids)


@pytest.fixture
def writer_parts(tmp_path: Path) -> Iterator[tuple[SnapshotWriter, Host, MemoryLedger, threading.Condition]]:
    cv = threading.Condition(threading.RLock())
    ledger = MemoryLedger(cv, Sizes.of(16.0, 256), None)
    host = Host()
    with SnapshotStore(tmp_path / "store") as store:
        writer = SnapshotWriter(cv, store, StatsRecorder(), host, defer_s=60.0)
        writer.start()
        yield writer, host, ledger, cv
        writer.stop(timeout=10)


def test_the_writer_waits_for_an_idle_moment_then_reports_back(
    writer_parts: tuple[SnapshotWriter, Host, MemoryLedger, threading.Condition],
) -> None:
    writer, host, ledger, cv = writer_parts
    host.busy = True
    writer.enqueue("a", _held(ledger, "first"))
    time.sleep(0.2)
    assert host.reports == [] and "a" in writer  # a turn is running: the write waits
    with cv:
        host.busy = False
        cv.notify_all()  # what a lease's end does
    wait_until(lambda: bool(host.reports), timeout=10)
    assert host.reports == [("a", True, 5)] and "a" not in writer and ledger.buffers == 0


def test_the_writer_cancels_a_state_live_again_and_keeps_a_failed_one(
    writer_parts: tuple[SnapshotWriter, Host, MemoryLedger, threading.Condition],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, host, ledger, cv = writer_parts
    host.busy = True
    held = _held(ledger)
    writer.enqueue("a", held)
    writer.cancel("a", held)
    assert "a" not in writer and ledger.buffers == 0  # never written, bytes freed

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llamanode.store._write_all", disk_full)
    with cv:
        host.busy = False
    writer.enqueue("b", _held(ledger))
    wait_until(lambda: bool(writer.failures()), timeout=10)
    assert "No space left" in writer.failures()[0] and writer.failed_bytes() == 100 and "b" in writer
    with pytest.raises(SnapshotError, match="No space left"):
        writer.settle("b", keep=True)  # retried once, synchronously
    monkeypatch.undo()
    writer.enqueue("c", _held(ledger))
    writer.flush()  # c's success retries b
    wait_until(lambda: len(host.reports) == 2, timeout=10)
    assert sorted(r[0] for r in host.reports) == ["b", "c"] and ledger.buffers == 0


# -- the pool over the toy backend ----------------------------------------------------------------------
def test_the_pool_asks_the_backend_for_padding_and_sizes(backends: list[FakeBackend], tmp_path: Path) -> None:
    padded = -(-CFG.num_ctx // FAKE_PAD) * FAKE_PAD
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        assert pool.backend is backends[0]
        assert pool.session_kv_bytes == int(FAKE_KV_PER_TOKEN * padded)
        with pool.session("a") as s:
            assert s.num_ctx == padded and s.kv_bytes() == pool.session_kv_bytes
        assert pool.tokenize("ab") == backends[0].tokenize("ab", False)
    assert backends[0].closed


def test_a_refused_budget_opens_nothing(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        need = probe.budget_for(1)
    threads = writer_threads()
    with pytest.raises(InvalidInputError, match="cannot hold one session"):
        SessionPool(MODEL, CFG, store_dir=tmp_path, memory_budget_bytes=need - 1)
    assert backends[-1].closed and writer_threads() == threads
    with SnapshotStore(tmp_path):  # never locked
        pass


def test_a_failed_construction_closes_what_it_opened(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as first:
        threads = writer_threads()
        with pytest.raises(SnapshotError, match="in use"):
            SessionPool(MODEL, CFG, store_dir=tmp_path)  # the store is locked by the first pool
        assert backends[-1].closed and not first.backend.closed and writer_threads() == threads


def test_workspace_ids_follow_the_one_rule_the_server_uses(backends: list[FakeBackend], tmp_path: Path) -> None:
    assert SERVER_PATTERN is WORKSPACE_ID_PATTERN
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        for bad in ("", "a/b", "-a", "a b", "a\n", "x" * 129):
            with pytest.raises(InvalidInputError, match="workspace id"), pool.session(bad):
                pass
        with pool.session("x" * 128), pool.session("repo-a.try_2"):
            pass


def test_restores_from_kept_memory_and_from_disk_decode_like_cold(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(1)
    for keep in (True, False):
        store = tmp_path / f"keep-{keep}"
        with SessionPool(MODEL, CFG, store_dir=store, memory_budget_bytes=budget, keep_written_states=keep) as pool:
            with pool.session("a") as s:
                first = turn(s, "alpha text")
            with pool.session("b") as s:  # evicts a
                turn(s, "beta text")
            pool.checkpoint("a")
            assert pool.stats().kept_states == int(keep)
            with pool.session("a") as s:
                assert turn(s, "alpha text") == first == cold("alpha text")
            stats = pool.stats()
            assert (stats.restores, stats.restores_from_memory, stats.evictions) == (1, int(keep), 2)
            assert (stats.transfer_seconds.get("read", 0.0) > 0) is not keep
            assert stats.peak_live_bytes <= budget


def test_forks_take_the_source_state_from_wherever_it_is(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("a") as s:
            turn(s, "alpha text")
        pool.fork("a", "live-fork")
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        pool.fork("a", "disk-fork")
        for name in ("live-fork", "disk-fork"):
            with pool.session(name) as s:
                assert turn(s, "alpha text") == cold("alpha text")
                prefix = s.explain_context().last_prefix
                assert prefix is not None and prefix.prefilled_tokens == 0
        assert pool.stats().forks == 1


def test_the_pool_takes_over_an_open_store(backends: list[FakeBackend], tmp_path: Path) -> None:
    phases: list[str] = []
    with SessionPool(MODEL, CFG, store=SnapshotStore(tmp_path, on_write_phase=phases.append)) as pool:
        with pool.session("a") as s:
            turn(s, "alpha text")
        pool.checkpoint("a")
        assert phases == ["mid_write", "before_commit", "before_unlink"]
    with SnapshotStore(tmp_path):  # closed with the pool: the lock is free
        pass
    given = SnapshotStore(tmp_path)
    with pytest.raises(InvalidInputError, match="not both"):
        SessionPool(MODEL, CFG, store=given, store_dir=tmp_path)
    with SnapshotStore(tmp_path):  # a refused construction closed the store it was given
        pass
    assert len(backends) == 1  # refused before a model handle was taken
