"""Forks for new sessions over the toy backend: SessionPool.fork_nearest, its races, and the keeping policy
(forks on probation are evicted, dropped and collected first) under many short sessions."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fakes import FakeBackend
from gates import wait_until
from llamanode import ForkOrigin, SessionPool, WorkspaceInfo
from llamanode.pool.keeping import PROBATION_USES, keep_rank, on_probation
from llamanode.pool.kept import KeptStates
from llamanode.pool.ledger import MemoryLedger, Sizes
from llamanode.pool.workspace import Workspace
from llamanode.store import SnapshotStore
from test_pool_parts import CFG, MODEL, _held, cold, turn

OPENING = "system: a careful agent with tools read, write and run; answer briefly and cite files.\n" * 2
MIN = 64


def fork_for(pool: SessionPool, dst: str, prompt: str, min_tokens: int = MIN) -> ForkOrigin | None:
    return pool.fork_nearest(dst, pool.tokenize(prompt), min_tokens)


def info(pool: SessionPool) -> dict[str, WorkspaceInfo]:
    return {w.id: w for w in pool.workspaces()}


def live_ids(pool: SessionPool) -> set[str]:
    return {w.id for w in pool.workspaces() if w.live}


def test_a_new_workspace_forks_the_one_sharing_the_longest_prefix(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
            main_tokens = s.resident_tokens()
        with pool.session("other") as s:
            turn(s, "unrelated words " * 6)
        prompt = OPENING + "task one"
        origin = fork_for(pool, "t1", prompt)
        assert origin is not None and origin.source == "main"
        assert origin.shared_tokens == len(OPENING) and origin.copied_tokens == len(main_tokens)
        with pool.session("t1") as s:
            report = s.explain_context()
            assert report.forked_from == origin and report.resident_tokens == len(main_tokens)
            assert report.last_divergence is not None and report.last_divergence.cause == "forked"
            assert "'main'" in report.last_divergence.detail
            assert turn(s, prompt) == cold(prompt)
            after = s.explain_context()
            assert after.last_prefix is not None and after.last_prefix.reused_tokens == len(OPENING)
            assert after.forked_from == origin  # it stays: where the state began
        hits = pool.stats().hits
        with pool.session("main") as s:  # the source was not disturbed: live, same tokens
            assert s.resident_tokens() == main_tokens
        stats = pool.stats()
        assert stats.hits == hits + 1 and stats.forks == 1 and stats.forked_workspaces == 1
        assert stats.on_probation == 1 and stats.transfer_seconds["fork"] > 0
        t1 = info(pool)["t1"]
        assert t1.forked_from == "main" and t1.uses == 1


def test_nothing_is_forked_for_an_existing_or_unrelated_workspace(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        assert fork_for(pool, "main", OPENING + "task") is None  # exists
        assert fork_for(pool, "t", "unrelated words " * 6) is None  # shares nothing
        assert fork_for(pool, "t", OPENING + "task", min_tokens=len(OPENING) + 1) is None  # shares too little
        assert not pool.has_workspace("t") and set(info(pool)) == {"main"}  # no empty record is left
        assert pool.stats().forks == 0
        explicit = pool.fork("main", "copy")
        assert explicit.shared_tokens == explicit.copied_tokens > len(OPENING)
        assert pool.has_workspace("copy") and info(pool)["copy"].forked_from == "main"


def test_two_requests_for_the_same_new_key_fork_once(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        tokens = pool.tokenize(OPENING + "task")
        start = threading.Barrier(4)
        results: list[ForkOrigin | None] = []

        def race() -> None:
            start.wait()
            results.append(pool.fork_nearest("same-key", tokens, MIN))

        threads = [threading.Thread(target=race) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sum(r is not None for r in results) == 1 and len(results) == 4
        assert pool.stats().forks == 1
        with pool.session("same-key") as s:
            assert turn(s, OPENING + "task") == cold(OPENING + "task")


def test_a_fork_waits_for_its_source_turn_and_copies_what_it_left(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        leased, forked = threading.Event(), threading.Event()
        found: list[ForkOrigin | None] = []

        def fork() -> None:
            leased.wait()
            found.append(fork_for(pool, "t", OPENING + "task"))
            forked.set()

        worker = threading.Thread(target=fork)
        worker.start()
        with pool.session("main") as s:
            leased.set()
            assert not forked.wait(0.3)  # the fork waits for this turn
            turn(s, OPENING + "main task, second turn")
            main_tokens = s.resident_tokens()
        worker.join(10)
        assert found and found[0] is not None and found[0].copied_tokens == len(main_tokens)
        with pool.session("t") as s:
            assert turn(s, OPENING + "task") == cold(OPENING + "task")


def test_the_keeping_rank_puts_forks_on_probation_first() -> None:
    origin = ForkOrigin("main", 10, 10, 0.0)
    plain = Workspace("plain", tick=1)
    fresh = Workspace("fresh", tick=5, origin=origin, uses=1)
    grown = Workspace("grown", tick=3, origin=origin, uses=PROBATION_USES)
    stored = Workspace("stored", tick=0, last_used=time.time())  # found on disk at start-up
    assert on_probation(fresh) and not on_probation(grown) and not on_probation(plain)
    ranked = sorted((plain, fresh, grown, stored), key=keep_rank)
    assert [w.id for w in ranked] == ["fresh", "stored", "plain", "grown"]
    kept = KeptStates()
    ledger = MemoryLedger(threading.Condition(threading.RLock()), Sizes.of(16.0, 256), None)
    for ws in (plain, fresh, grown):
        kept.keep(ws.id, _held(ledger))
    by_id = {w.id: w for w in (plain, fresh, grown)}
    assert kept.drop_one(lambda i: True, lambda i: keep_rank(by_id[i]))
    assert kept.usable(Workspace("fresh")) is None and len(kept) == 2  # the fork went first
    assert kept.drop_one(lambda i: True)  # without a rank: the least recently kept
    assert len(kept) == 1


def test_eviction_takes_forks_on_probation_before_older_workspaces(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(2)
    for uses, evicted in ((1, "t"), (PROBATION_USES, "main")):
        with SessionPool(MODEL, CFG, store_dir=tmp_path / str(uses), memory_budget_bytes=budget) as pool:
            with pool.session("main") as s:
                turn(s, OPENING + "main task")
            assert fork_for(pool, "t", OPENING + "task") is not None
            for _ in range(uses):
                with pool.session("t") as s:  # more recently used than main
                    turn(s, OPENING + "task")
            with pool.session("new") as s:  # needs room: a fork on probation goes first, else LRU
                turn(s, "unrelated words " * 6)
            assert live_ids(pool) == {"main", "t", "new"} - {evicted}


def test_a_fork_of_a_fork_on_probation_evicts_its_source_not_the_main_workspace(
    backends: list[FakeBackend], tmp_path: Path
) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(2)
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "s", memory_budget_bytes=budget) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        previous = "main"
        for i in range(4):
            prompt = OPENING + f"task {i}: fix it"
            origin = fork_for(pool, f"t{i}", prompt)
            assert origin is not None and origin.source == previous  # "task " is shared with the last fork
            with pool.session(f"t{i}") as s:
                assert turn(s, prompt) == cold(prompt)
            assert "main" in live_ids(pool)
            previous = f"t{i}"
        assert pool.stats().peak_live_bytes <= budget


def test_a_fork_waits_for_a_busy_fork_on_probation_rather_than_evict_its_source(
    backends: list[FakeBackend], tmp_path: Path
) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(2)
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "s", memory_budget_bytes=budget) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        assert fork_for(pool, "t0", OPENING + "first task") is not None
        leased, released = threading.Event(), threading.Event()

        def busy() -> None:  # t0's turn is still running (its answer prefilled for the next turn, say)
            with pool.session("t0"):
                leased.set()
                time.sleep(0.3)
                released.set()

        worker = threading.Thread(target=busy)
        worker.start()
        leased.wait()
        origin = fork_for(pool, "t1", OPENING + "second task")  # main ranks first among equal shares
        assert origin is not None and origin.source == "main" and released.is_set()
        worker.join(10)
        assert live_ids(pool) == {"main", "t1"}  # t0 went once free, not the source


def test_admission_waits_a_moment_for_a_busy_fork_on_probation(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(2)
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "s", memory_budget_bytes=budget) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        assert fork_for(pool, "t0", OPENING + "task zero") is not None
        with pool.session("t0") as s:
            turn(s, OPENING + "task zero")
        assert fork_for(pool, "t1", OPENING + "main task, other") is not None  # from main: evicts t0
        assert live_ids(pool) == {"main", "t1"}
        leased, released = threading.Event(), threading.Event()

        def busy() -> None:
            with pool.session("t1"):
                leased.set()
                time.sleep(0.3)
                released.set()

        worker = threading.Thread(target=busy)
        worker.start()
        leased.wait()
        origin = fork_for(pool, "t2", OPENING + "task zero, again")  # from t0's evicted state
        assert origin is not None and origin.source == "t0" and released.is_set()
        worker.join(10)
        assert live_ids(pool) == {"main", "t2"}


def test_two_forks_needing_room_at_once_both_finish(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(2)
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "s", memory_budget_bytes=budget) as pool:
        for name in ("left", "right"):
            with pool.session(name) as s:
                turn(s, f"{name} " * 20)
        start = threading.Barrier(2)
        found: dict[str, ForkOrigin | None] = {}

        def fork(name: str) -> None:
            start.wait()
            found[name] = fork_for(pool, f"{name}-task", f"{name} " * 20 + "task", min_tokens=32)

        threads = [threading.Thread(target=fork, args=(name,)) for name in ("left", "right")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads)
        assert {k: v.source for k, v in found.items() if v is not None} == {"left": "left", "right": "right"}
        for name in ("left", "right"):
            with pool.session(f"{name}-task") as s:
                assert turn(s, f"{name} " * 20 + "task") == cold(f"{name} " * 20 + "task")
        assert pool.stats().peak_live_bytes <= budget


def test_fifty_one_shot_forks_keep_the_main_workspace_warm_and_the_disk_bounded(
    backends: list[FakeBackend], tmp_path: Path
) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "probe") as probe:
        budget = probe.budget_for(2)
        with probe.session("main") as s:
            turn(s, OPENING + "main task")
        probe.checkpoint("main")
        snapshot = info(probe)["main"].snapshot_bytes
    disk = 4 * snapshot
    store = tmp_path / "store"
    with SessionPool(MODEL, CFG, store_dir=store, memory_budget_bytes=budget, disk_budget_bytes=disk) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        pool.checkpoint("main")  # the oldest snapshot: plain LRU would collect it first
        for i in range(50):
            prompt = OPENING + f"one-shot task {i}"
            assert fork_for(pool, f"task-{i}", prompt) is not None
            with pool.session(f"task-{i}") as s:
                answer = turn(s, prompt)
            if i % 10 == 9:
                assert answer == cold(prompt)
                hits = pool.stats().hits
                with pool.session("main") as s:  # the agent comes back: still live, a hit
                    turn(s, OPENING + "main task")
                assert pool.stats().hits == hits + 1
            assert "main" in live_ids(pool)
        wait_until(lambda: pool.stats().pending_writes == 0, timeout=10)
        stats = pool.stats()
        assert stats.forks == 50 and stats.misses == 1 and stats.collected > 0  # one miss: main's first lease
        assert stats.peak_live_bytes <= budget
        assert stats.snapshot_bytes <= disk + 2 * snapshot  # the budget, plus what a write protects
        assert info(pool)["main"].snapshot_bytes > 0  # forks' snapshots were collected first
    with SnapshotStore(store, exclusive=False) as check:
        assert check.get("main") is not None


def test_the_disk_budget_collects_in_the_order_it_is_given(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        for name in ("old", "fork-a", "fork-b", "stray", "new"):
            with pool.session(name) as s:
                turn(s, f"{name} words " * 5)
            pool.checkpoint(name)
            time.sleep(0.01)  # distinct last_used
    with SnapshotStore(tmp_path) as store:
        sizes = {e.workspace_id: e.size_bytes for e in store.entries()}
        store.disk_budget_bytes = sizes["old"] + sizes["new"]
        order = ["fork-b", "fork-a", "old", "new"]  # "stray" is not named: it goes first
        assert store.collect_garbage(protect={"new"}, order=order) == ["stray", "fork-b", "fork-a"]
        assert {e.workspace_id for e in store.entries()} == {"old", "new"}
        store.disk_budget_bytes = 0
        assert store.collect_garbage() == ["old", "new"]  # no order: least recently used first


def test_a_restored_fork_still_says_where_it_began(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as probe:
        budget = probe.budget_for(1)
    with SessionPool(MODEL, CFG, store_dir=tmp_path / "s", memory_budget_bytes=budget) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        origin = fork_for(pool, "t", OPENING + "task")  # a budget of one: through main's evicted state
        assert origin is not None
        with pool.session("main"):  # evicts t
            pass
        with pool.session("t") as s:
            report = s.explain_context()
            assert report.forked_from == origin
            assert report.last_divergence is not None and report.last_divergence.cause == "restored"
            assert turn(s, OPENING + "task") == cold(OPENING + "task")
