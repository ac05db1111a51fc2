"""SessionPool on the real default model: restores, evictions and forks decode exactly like cold sessions."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gates import wait_until
from llamanode import Config, DecodeConfig, KVSession, PoolStats, SessionPool, WorkspaceInfo, open_session
from llamanode.errors import InvalidInputError, SessionBusyError, SessionClosedError, SnapshotError
from llamanode.session import default_model_path
from llamanode.snapshot import encode_header, parse_header
from llamanode.store import INDEX_FILE, SnapshotStore

CFG = Config(num_ctx=512, num_threads=1)
MAX_TOKENS = 8


def prefix_text(name: str) -> str:
    body = "".join(f"def {name}_{i}(x):\n    return x * {i + 2}\n" for i in range(5))
    return f"<|im_start|>system\nYou are a coding assistant for project {name}.\n{body}<|im_end|>\n"


def suffix_text(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


Q1 = suffix_text("What does the second function return for 3?")
Q2 = suffix_text("Name the first function.")


def decode(session: KVSession, n: int = MAX_TOKENS) -> list[int]:
    return [t for chunk in session.decode(DecodeConfig(max_tokens=n)) for t in chunk.token_ids]


def turn(session: KVSession, name: str, question: str) -> list[int]:
    session.ensure_prefix(session.prefix((("system", prefix_text(name)),)))
    session.prefill_suffix(session.suffix(question))
    return decode(session)


_cold_cache: dict[tuple[str, str, Config, bool], list[int]] = {}


def cold(name: str, question: str, config: Config = CFG, then_continue: bool = False) -> list[int]:
    """Greedy tokens of a cold session (memoised); then_continue appends a second decode call."""
    key = (name, question, config, then_continue)
    if key not in _cold_cache:
        with open_session(None, config) as session:
            tokens = turn(session, name, question)
            if then_continue:
                tokens += decode(session)
        _cold_cache[key] = tokens
    return _cold_cache[key]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def pool(store_dir: Path) -> Iterator[SessionPool]:
    p = SessionPool(None, CFG, store_dir=store_dir)
    yield p
    p.close()


def snapshot_file(store_dir: Path, workspace_id: str) -> Path:
    with SnapshotStore(store_dir, exclusive=False) as store:
        entry = store.get(workspace_id)
        assert entry is not None
        return store.path_of(entry)


def budget_for(store_dir: Path, live_sessions: int) -> int:
    """The smallest memory budget that keeps live_sessions workspaces of CFG live (asked of a probe pool)."""
    with SessionPool(None, CFG, store_dir=store_dir) as probe:
        return probe.budget_for(live_sessions)


def write_one(store_dir: Path, name: str = "a", config: Config = CFG, model: str | None = None) -> None:
    with SessionPool(model, config, store_dir=store_dir) as p, p.session(name) as s:
        turn(s, name, Q1)


# -- exactness ---------------------------------------------------------------------------------------
def test_restored_session_decodes_like_a_cold_one(store_dir: Path) -> None:
    with SessionPool(None, CFG, store_dir=store_dir) as first, first.session("a") as s:
        assert turn(s, "a", Q1) == cold("a", Q1)
    with SessionPool(None, CFG, store_dir=store_dir) as second:
        with second.session("a") as s:
            report = s.explain_context()
            assert report.last_divergence is not None and report.last_divergence.cause == "restored"
            assert report.generated_tokens == MAX_TOKENS - 1
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]  # continue right after restore
        with second.session("a") as s:
            assert turn(s, "a", Q2) == cold("a", Q2)  # warm prefix, new suffix
            prefix = s.explain_context().last_prefix
            assert prefix is not None and prefix.prefilled_tokens == 0 and prefix.reused_tokens > 0
        stats = second.stats()
        assert (stats.restores, stats.hits, stats.misses) == (1, 1, 0)


def test_evicted_and_restored_session_decodes_like_a_cold_one(store_dir: Path) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget, keep_written_states=False) as p:
        with p.session("a") as s:
            assert turn(s, "a", Q1) == cold("a", Q1)
        with p.session("b") as s:  # evicts a (its state goes to the writer; its context is reused for b)
            assert turn(s, "b", Q1) == cold("b", Q1)
        assert [(w.id, w.live) for w in p.workspaces()] == [("b", True), ("a", False)]
        p.checkpoint("a")  # waits until a's evicted state is on disk
        with p.session("a") as s:  # evicts b, restores a from disk
            assert turn(s, "a", Q2) == cold("a", Q2)
            prefix = s.explain_context().last_prefix
            assert prefix is not None and prefix.prefilled_tokens == 0
        p.checkpoint("b")
        stats = p.stats()
        assert (stats.evictions, stats.restores, stats.restores_from_memory, stats.snapshots_written) == (2, 1, 0, 2)
        assert stats.peak_live_bytes <= budget and stats.pending_writes == 0


def test_a_written_state_kept_in_memory_restores_exactly(store_dir: Path) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        with p.session("a") as s:
            assert turn(s, "a", Q1) == cold("a", Q1)
        with p.session("b") as s:  # evicts a
            turn(s, "b", Q1)
        p.checkpoint("a")  # a is on disk now, and kept in memory
        assert (p.stats().pending_writes, p.stats().kept_states) == (0, 1)
        with p.session("a") as s:  # evicts b; a comes back from the kept copy, not the file
            assert s.explain_context().last_divergence.cause == "restored"  # type: ignore[union-attr]
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]
        with p.session("a") as s:
            assert turn(s, "a", Q2) == cold("a", Q2)
        p.checkpoint("b")
        stats = p.stats()
        assert (stats.restores, stats.restores_from_memory, stats.kept_states) == (1, 1, 1)  # b is kept now
        assert stats.peak_live_bytes <= budget and stats.transfer_seconds.get("read", 0.0) == 0.0


def test_kept_states_yield_room_and_the_dropped_ones_restore_from_disk(store_dir: Path) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        first: dict[str, list[int]] = {"w0": []}
        with p.session("w0") as s:
            first["w0"] = turn(s, "w0", Q1)
        p.checkpoint("w0")
        state_size = p.workspaces()[0].snapshot_bytes
        n = p.transfer_headroom // state_size + 3  # more evicted states than the headroom holds
        assert n <= 40, "prompts too small for this test"
        for i in range(1, n):
            with p.session(f"w{i}") as s:
                first[f"w{i}"] = turn(s, f"w{i}", Q1)
            p.checkpoint(f"w{i - 1}")
            stats = p.stats()
            assert stats.live_bytes <= budget and stats.kept_states * state_size <= p.transfer_headroom
        with p.session("w0") as s:  # its kept copy was dropped for room: restored from the verified file
            assert turn(s, "w0", Q2) == cold("w0", Q2)
        stats = p.stats()
        assert stats.restores - stats.restores_from_memory == 1 and stats.transfer_seconds["read"] > 0
        assert stats.peak_live_bytes <= budget and first["w0"] == cold("w0", Q1)


def test_forked_sessions_decode_like_cold_ones(store_dir: Path) -> None:
    with SessionPool(None, CFG, store_dir=store_dir) as p:
        budget = p.budget_for(1)
        with p.session("a") as s:
            turn(s, "a", Q1)
        p.fork("a", "live-fork")  # exported from the live session
        with p.session("live-fork") as s:
            assert turn(s, "a", Q2) == cold("a", Q2)
            prefix = s.explain_context().last_prefix
            assert prefix is not None and prefix.prefilled_tokens == 0
        with p.session("a") as s:
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]  # the source is untouched
        with pytest.raises(InvalidInputError):
            p.fork("a", "live-fork")
        with pytest.raises(InvalidInputError):
            p.fork("nope", "x")
        assert p.stats().forks == 1
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        p.fork("a", "disk-fork")  # a is on disk: loaded straight into the fork
        with p.session("disk-fork") as s:
            assert turn(s, "a", Q2) == cold("a", Q2)
        with p.session("a") as s:  # one live session at a time: the fork goes through a's snapshot
            pass
        p.fork("a", "budget-fork")
        with p.session("budget-fork") as s:
            assert turn(s, "a", Q2) == cold("a", Q2)
        assert p.stats().peak_live_bytes <= budget


# -- refusals -----------------------------------------------------------------------------------------
def flip(path: Path, offset_from_end: int) -> None:
    with path.open("r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        byte = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))


def retamper(store_dir: Path, path: Path, **changes: object) -> None:
    data = path.read_bytes()
    header, offset = parse_header(data)
    path.write_bytes(encode_header(dataclasses.replace(header, **changes)) + data[offset:])  # type: ignore[arg-type]
    db = sqlite3.connect(store_dir / INDEX_FILE)
    db.execute("UPDATE snapshots SET size_bytes=? WHERE file=?", (path.stat().st_size, path.name))
    db.commit()
    db.close()


def damage_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(30)
        f.write(b"#")


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 4096)


DAMAGE = {
    "flipped_kv_byte": (lambda d, p: flip(p, 1000), "corrupt", "SnapshotCorruptError"),
    "damaged_header": (lambda d, p: damage_header(p), "corrupt", "SnapshotCorruptError"),
    "truncated": (lambda d, p: truncate(p), "corrupt", "SnapshotCorruptError"),
    "other_model_digest": (lambda d, p: retamper(d, p, model_digest="0" * 64), "mismatch", "SnapshotMismatchError"),
    "other_build_id": (lambda d, p: retamper(d, p, build_id="other+x"), "mismatch", "SnapshotMismatchError"),
}


def assert_refused_then_cold(store_dir: Path, reason: str, error: str, config: Config = CFG) -> PoolStats:
    with SessionPool(None, config, store_dir=store_dir) as p:
        with p.session("a") as s:
            report = s.explain_context()
            assert report.resident_tokens == 0  # nothing of the refused snapshot reached the context
            assert report.last_divergence is not None and report.last_divergence.cause == "cold"
            assert "refused" in report.last_divergence.detail
            assert turn(s, "a", Q1) == cold("a", Q1, config)
            divergence = s.explain_context().last_divergence
            assert divergence is not None and "refused" in divergence.detail
        stats = p.stats()
        assert stats.miss_reasons == {reason: 1} and stats.restores == 0
        assert stats.recent_misses[-1].error == error and stats.recent_misses[-1].workspace_id == "a"
        return stats


def test_a_new_workspace_forked_from_the_nearest_decodes_like_a_cold_one(store_dir: Path) -> None:
    with SessionPool(None, CFG, store_dir=store_dir) as p:
        for name in ("a", "b"):
            with p.session(name) as s:
                turn(s, name, Q1)
        with p.session("a") as s:
            source_tokens = s.resident_tokens()
        origin = p.fork_nearest("new", p.tokenize(prefix_text("a") + Q2), min_tokens=32)
        assert origin is not None and origin.source == "a" and origin.copied_tokens == len(source_tokens)
        n_prefix = len(p.tokenize(prefix_text("a")))
        with p.session("new") as s:
            report = s.explain_context()
            assert report.forked_from == origin and report.last_divergence is not None
            assert report.last_divergence.cause == "forked"
            assert turn(s, "a", Q2) == cold("a", Q2)
            prefix = s.explain_context().last_prefix
            assert prefix is not None and prefix.reused_tokens == n_prefix and prefix.prefilled_tokens == 0
        with p.session("a") as s:  # the source is as it was
            assert s.resident_tokens() == source_tokens
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]
        assert p.fork_nearest("new", p.tokenize(prefix_text("a") + Q2), min_tokens=32) is None  # exists now


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_or_foreign_snapshot_is_refused_and_the_session_works_cold(store_dir: Path, damage: str) -> None:
    write_one(store_dir)
    tamper, reason, error = DAMAGE[damage]
    tamper(store_dir, snapshot_file(store_dir, "a"))
    stats = assert_refused_then_cold(store_dir, reason, error)
    if damage == "other_build_id":
        assert "build_id" in stats.recent_misses[-1].detail
    if damage == "other_model_digest":
        assert "model_digest" in stats.recent_misses[-1].detail


def test_snapshot_of_another_model_file_is_refused(store_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    shutil.copyfile(default_model_path(), other)
    with other.open("ab") as f:
        f.write(b"\0" * 32)  # same weights, another file: another digest
    write_one(store_dir, model=str(other))
    stats = assert_refused_then_cold(store_dir, "mismatch", "SnapshotMismatchError")
    assert "model_digest" in stats.recent_misses[-1].detail


def test_snapshot_of_another_kv_cache_type_is_refused(store_dir: Path) -> None:
    write_one(store_dir, config=Config(num_ctx=512, num_threads=1, kv_cache_type="q8_0", flash_attn=True))
    f16_fa = Config(num_ctx=512, num_threads=1, flash_attn=True)
    stats = assert_refused_then_cold(store_dir, "mismatch", "SnapshotMismatchError", f16_fa)
    assert "kv_config.kv_cache_type" in stats.recent_misses[-1].detail


# -- budgets, leases, threads ----------------------------------------------------------------------------
def test_many_workspaces_under_a_small_budget_stay_correct_and_warm(store_dir: Path) -> None:
    names = [f"w{i}" for i in range(5)]
    budget = budget_for(store_dir, 2)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        first: dict[str, list[int]] = {}
        for name in names:
            with p.session(name) as s:
                first[name] = turn(s, name, Q1)
            assert p.stats().live_workspaces <= 2
        for name in names:
            restores = p.stats().restores
            with p.session(name) as s:
                assert s.explain_context().last_divergence.cause == "restored"  # type: ignore[union-attr]
                assert turn(s, name, Q1) == first[name]
                prefix = s.explain_context().last_prefix
                assert prefix is not None and prefix.prefilled_tokens == 0
            stats = p.stats()
            assert stats.restores == restores + 1 and stats.live_workspaces <= 2
        assert first["w0"] == cold("w0", Q1)
        stats = p.stats()
        assert stats.peak_live_bytes <= budget and stats.live_bytes <= budget
        assert stats.misses == 5 and stats.miss_reasons == {"new": 5} and stats.restores == 5
        wait_until(lambda: p.stats().pending_writes == 0, 30)  # no lease held: the writer writes at once
        infos = p.workspaces()
        assert all(isinstance(i, WorkspaceInfo) for i in infos) and len(infos) == 5
        assert sum(i.live for i in infos) <= 2 and all(i.snapshot_bytes > 0 or i.live for i in infos)


def test_different_workspaces_are_leased_in_parallel(pool: SessionPool) -> None:
    barrier = threading.Barrier(2, timeout=20)
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with pool.session(name) as s:
                barrier.wait()  # both leases are held at once
                results[name] = turn(s, name, Q1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {"a": cold("a", Q1), "b": cold("b", Q1)}


def test_the_same_workspace_is_serialized_across_threads(pool: SessionPool) -> None:
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with pool.session("a"):
            order.append("first in")
            inside.set()
            release.wait(20)
            order.append("first out")

    def second() -> None:
        with pool.session("a"):
            order.append("second in")

    t1 = threading.Thread(target=holder)
    t1.start()
    assert inside.wait(20)
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.3)
    assert order == ["first in"]  # the second lease is waiting
    release.set()
    t1.join(20)
    t2.join(20)
    assert order == ["first in", "first out", "second in"]


def test_nested_lease_of_the_same_workspace_is_refused(pool: SessionPool) -> None:
    with pool.session("a"), pytest.raises(SessionBusyError), pool.session("a"):
        pass


def test_eviction_never_touches_a_leased_workspace(store_dir: Path) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        with p.session("a") as s:
            s.ensure_prefix(s.prefix((("system", prefix_text("a")),)))
            with pytest.raises(SessionBusyError), p.session("b"):  # the only room is held by this very thread
                pass
            assert s.explain_context().resident_tokens > 0
        got: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def hold_a() -> None:
            with p.session("a"):
                inside.set()
                release.wait(20)

        t = threading.Thread(target=hold_a)
        t.start()
        assert inside.wait(20)
        waiter = threading.Thread(target=lambda: got.append(_lease_and_return(p, "b")))
        waiter.start()
        time.sleep(0.3)
        assert got == []  # b waits for room: a is leased and cannot be evicted
        release.set()
        t.join(20)
        waiter.join(20)
        assert got == ["b"] and p.stats().evictions == 1


def _lease_and_return(p: SessionPool, name: str) -> str:
    with p.session(name):
        return name


# -- the rest of the API -------------------------------------------------------------------------------
def test_longest_prefix_routes_to_live_and_evicted_workspaces(store_dir: Path) -> None:
    with SessionPool(None, CFG, store_dir=store_dir) as p:
        for name in ("a", "b"):
            with p.session(name) as s:
                turn(s, name, Q1)
        query = p.tokenize(prefix_text("b") + Q2)
        n_prefix = len(p.tokenize(prefix_text("b")))
        found, n = p.longest_prefix(query)
        assert found == "b" and n >= n_prefix - 1
        assert p.longest_prefix(query, min_tokens=len(query) + 1) == (None, 0)
        assert p.longest_prefix(p.tokenize("unrelated text"))[0] is None
    with SessionPool(None, CFG, store_dir=store_dir) as p:  # both on disk now
        assert p.longest_prefix(p.tokenize(prefix_text("a") + Q2))[0] == "a"


def test_checkpoint_drop_and_workspace_info(pool: SessionPool) -> None:
    with pool.session("a") as s:
        turn(s, "a", Q1)
    pool.checkpoint("a")
    pool.checkpoint("a")  # unchanged: not written again
    stats = pool.stats()
    assert stats.snapshots_written == 1 and stats.evictions == 0 and stats.snapshot_bytes > 0
    (info,) = pool.workspaces()
    assert info.id == "a" and info.live and info.kv_bytes == pool.session_kv_bytes
    assert info.resident_tokens > 0 and info.snapshot_bytes > 0 and info.last_used > 0
    pool.drop("a")
    assert pool.workspaces() == [] and pool.stats().snapshot_bytes == 0
    with pytest.raises(InvalidInputError):
        pool.drop("a")
    with pool.session("a") as s:
        assert s.explain_context().resident_tokens == 0
    assert pool.stats().miss_reasons == {"new": 2}


def test_disk_budget_collects_and_names_the_miss(store_dir: Path) -> None:
    with SessionPool(None, CFG, store_dir=store_dir, disk_budget_bytes=1) as p:
        for name in ("a", "b"):
            with p.session(name) as s:
                turn(s, name, Q1)
            p.checkpoint(name)
        stats = p.stats()
        assert stats.collected == 1 and [w.id for w in p.workspaces() if w.snapshot_bytes] == ["b"]
        p.drop("a")  # a is live: dropping it loses its KV; nothing on disk to restore
    with SessionPool(None, CFG, store_dir=store_dir) as p:
        assert [w.id for w in p.workspaces()] == ["b"]


def test_closed_pool_and_small_budget_are_refused(store_dir: Path) -> None:
    p = SessionPool(None, CFG, store_dir=store_dir)
    need = p.budget_for(1)
    p.close()
    p.close()
    with pytest.raises(SessionClosedError), p.session("a"):
        pass
    with pytest.raises(InvalidInputError, match="cannot hold one session"):
        SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=need - 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=need) as ok:
        assert ok.stats().memory_budget_bytes == need


def block_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every snapshot write wait for the returned event (the writer thread stalls mid-write)."""
    import llamanode.store

    gate = threading.Event()
    original = llamanode.store._write_all

    def gated(fd: int, data: bytes) -> None:
        assert gate.wait(60)
        original(fd, data)

    monkeypatch.setattr(llamanode.store, "_write_all", gated)
    return gate


def test_a_state_still_being_written_restores_from_memory(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        with p.session("a") as s:
            turn(s, "a", Q1)
        gate = block_writes(monkeypatch)
        with p.session("b") as s:  # a's state is exported; its write is stuck
            turn(s, "b", Q1)
        assert p.stats().pending_writes == 1
        with p.session("a") as s:  # restored from the state in memory
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]
        stats = p.stats()
        assert stats.restores_from_memory == 1 and stats.peak_live_bytes <= budget
        gate.set()
        p.checkpoint("b")
        assert p.stats().pending_writes == 0


def test_writes_wait_for_an_idle_pool_and_a_state_live_again_is_not_written(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = budget_for(store_dir, 2)
    # write_defer_s: only idleness or need may start a write
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget, write_defer_s=120.0) as p:
        holding, release = threading.Event(), threading.Event()

        def hold_z() -> None:
            with p.session("z") as s:
                turn(s, "z", Q1)
                holding.set()
                release.wait(timeout=60)

        other = threading.Thread(target=hold_z)
        other.start()
        try:
            assert holding.wait(timeout=60)
            with p.session("a") as s:
                turn(s, "a", Q1)
            with p.session("b") as s:  # evicts a: its write waits, z's lease is held
                turn(s, "b", Q1)
            time.sleep(0.3)
            assert (p.stats().pending_writes, p.stats().snapshots_written) == (1, 0)
            with p.session("a") as s:  # evicts b; a is live again from memory, so its write is dropped
                assert turn(s, "a", Q2) == cold("a", Q2)
            stats = p.stats()
            assert (stats.writes_cancelled, stats.pending_writes, stats.snapshots_written) == (1, 1, 0)
        finally:
            release.set()
            other.join(timeout=60)
        wait_until(lambda: p.stats().pending_writes == 0, 30)  # idle now: b is written at once
        assert p.stats().snapshots_written == 1 and p.stats().peak_live_bytes <= budget
        with SnapshotStore(store_dir, exclusive=False) as store:
            assert store.get("b") is not None and store.get("a") is None


def test_failed_writes_keep_states_in_memory(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = budget_for(store_dir, 1)
    with SessionPool(None, CFG, store_dir=store_dir, memory_budget_bytes=budget) as p:
        with p.session("a") as s:
            turn(s, "a", Q1)

        def disk_full(fd: int, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("llamanode.store._write_all", disk_full)
        with p.session("b") as s:  # evicting a succeeds; writing it fails in the background
            turn(s, "b", Q1)
        wait_until(lambda: p.stats().snapshot_failures == 1, 30)
        assert [(w.id, w.live) for w in p.workspaces()] == [("b", True), ("a", False)]
        with pytest.raises(SnapshotError, match="No space left"):
            p.checkpoint("a")  # retries once, synchronously
        with p.session("a") as s:  # nothing was lost: a comes back from memory
            assert decode(s) == cold("a", Q1, then_continue=True)[MAX_TOKENS:]
        wait_until(lambda: p.stats().snapshot_failures == 3, 30)  # the retry of a, then b's write failed
        with p.session("c") as s:  # a goes to memory as well: two failed states fit the transfer headroom
            turn(s, "c", Q1)
        wait_until(lambda: p.stats().snapshot_failures == 4, 30)
        assert p.stats().pending_writes == 2
        monkeypatch.undo()
        p.checkpoint("a")  # retries a's write; success retries the others
        wait_until(lambda: p.stats().pending_writes == 0, 30)
        with p.session("b") as s:
            assert decode(s) == cold("b", Q1, then_continue=True)[MAX_TOKENS:]
        assert p.stats().snapshot_failures == 4 and p.stats().peak_live_bytes <= budget
