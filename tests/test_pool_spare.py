"""SessionPool(spare_ahead=True) over the toy backend: a context opened while no turn runs, taken by the next
new or forked workspace instead of opening one, never beyond the memory budget, and closed with the pool."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fakes import FakeBackend, FakeContext
from gates import wait_until
from llamanode import Config, SessionPool
from test_pool_forks import OPENING, fork_for
from test_pool_parts import CFG, MODEL, cold, turn


def test_a_spare_opened_after_a_lease_is_taken_by_a_fork(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path, spare_ahead=True) as pool:
        assert pool.stats().spares_opened == 0  # nothing before the first lease
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        wait_until(lambda: pool.stats().spares_opened == 1, timeout=10)
        contexts = backends[0].contexts
        assert len(contexts) == 2  # main's, and the spare
        prompt = OPENING + "task one"
        assert fork_for(pool, "t1", prompt) is not None
        assert len(contexts) == 2  # the fork took the spare: no context was opened for it
        with pool.session("t1") as s:
            assert turn(s, prompt) == cold(prompt)  # a spare that served before holds nothing of it
        wait_until(lambda: pool.stats().spares_opened == 2, timeout=10)  # refilled once no turn runs
        assert len(contexts) == 3 and pool.stats().evictions == 0
    assert all(c.closed for c in contexts)


def test_the_spare_counts_in_the_budget_and_never_evicts(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path, spare_ahead=True) as pool:
        pool.memory_budget_bytes = pool.budget_for(2)
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        wait_until(lambda: pool.stats().spares_opened == 1, timeout=10)
        assert pool.stats().live_bytes == 2 * backends[0].contexts[0].kv_bytes()
        with pool.session("other") as s:  # takes the spare: the budget is full, nothing is evicted
            turn(s, "unrelated words " * 6)
        assert len(backends[0].contexts) == 2 and pool.stats().evictions == 0
        # no room for another spare now (the pool's Room would refuse it; the thread asks it the same)
        assert not pool._room.prepare_spare()
        assert pool.stats().spares_opened == 1 and {w.id for w in pool.workspaces() if w.live} == {"main", "other"}


def test_without_spare_ahead_no_context_is_opened_ahead(backends: list[FakeBackend], tmp_path: Path) -> None:
    with SessionPool(MODEL, CFG, store_dir=tmp_path) as pool:
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        assert fork_for(pool, "t1", OPENING + "task one") is not None
        assert len(backends[0].contexts) == 2 and pool.stats().spares_opened == 0


def test_an_admission_waits_for_the_spare_being_opened(
    backends: list[FakeBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork arriving while the spare is being opened takes it when it is ready instead of opening another."""
    with SessionPool(MODEL, CFG, store_dir=tmp_path, spare_ahead=True) as pool:
        backend = backends[0]
        opening, release = threading.Event(), threading.Event()
        plain_open = backend.open_context

        openers: list[str] = []

        def slow_open(config: Config) -> FakeContext:
            openers.append(threading.current_thread().name)
            if openers[-1] == "llamanode-spare":
                opening.set()
                assert release.wait(10)
            return plain_open(config)

        monkeypatch.setattr(backend, "open_context", slow_open)
        with pool.session("main") as s:
            turn(s, OPENING + "main task")
        assert opening.wait(10)  # the spare is being opened now
        forked: list[object] = []
        fork = threading.Thread(target=lambda: forked.append(fork_for(pool, "t1", OPENING + "task one")))
        fork.start()
        fork.join(0.3)
        assert fork.is_alive() and len(backend.contexts) == 1  # waiting for the spare, not opening its own
        release.set()
        fork.join(10)
        assert forked and forked[0] is not None
        assert openers[0] != "llamanode-spare" and set(openers[1:]) == {"llamanode-spare"}  # main's, then spares
