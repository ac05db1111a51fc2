"""A process SIGKILLed while writing a snapshot leaves a store that recovers: every listed snapshot verifies,
and the workspace's previous good snapshot still restores and decodes like a cold session."""

from __future__ import annotations

import inspect
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamanode import Config, DecodeConfig, KVSession, SessionPool, open_session
from llamanode.store import SNAP_DIR, SnapshotStore

CFG = Config(num_ctx=512, num_threads=1)
QUESTION = "<|im_start|>user\nWhat does the last function return?<|im_end|>\n<|im_start|>assistant\n"


def prefix_text(version: int) -> str:
    body = "".join(f"def step_{version}_{i}(x):\n    return x + {i * version}\n" for i in range(4))
    return f"<|im_start|>system\nYou maintain module v{version}.\n{body}<|im_end|>\n"


# Runs in the child: writes a good snapshot of "a" (v1) and of "b", then checkpoints "a" at v2 with the
# store's write-phase hook armed (phase), or, with phase "loop", checkpoints new versions until it is killed.
CHILD = """
import os, sys, time
from llamanode import Config, SessionPool
from llamanode.store import WRITE_PHASES, SnapshotStore
{prefix_text}
store, marker, phase = sys.argv[1:4]
armed = {{"phase": ""}}

def stall(at):  # the write-phase seam: mark the phase reached, then wait to be killed
    assert at in WRITE_PHASES
    if at == armed["phase"]:
        open(marker, "w").write(str(os.getpid()))
        while True:
            time.sleep(60)

config = Config(num_ctx=512, num_threads=1)
budget = None
if phase == "evict":  # one live session: a's v2 is written by the background writer when b evicts it
    with SessionPool(None, config, store_dir=store + ".probe") as probe:
        budget = probe.budget_for(1)
pool = SessionPool(None, config, store=SnapshotStore(store, on_write_phase=stall), memory_budget_bytes=budget)
for name, version in (("a", 1), ("b", 3)):
    with pool.session(name) as s:
        s.ensure_prefix(s.prefix((("system", prefix_text(version)),)))
    pool.checkpoint(name)
open(marker + ".ready", "w").close()
if phase == "evict":
    with pool.session("a") as s:
        s.ensure_prefix(s.prefix((("system", prefix_text(2)),)))
    armed["phase"] = "mid_write"
    with pool.session("b"):
        pass
    pool.close()  # waits for the stalled write
versions = [2] if phase != "loop" else [2, 4, 5, 6, 7, 8, 9, 10] * 50
if phase != "loop":
    armed["phase"] = phase
for version in versions:
    with pool.session("a") as s:
        s.ensure_prefix(s.prefix((("system", prefix_text(version)),)))
    pool.checkpoint("a")
print("finished without being killed", flush=True)
"""


def start_child(store: Path, marker: Path, phase: str) -> subprocess.Popen[str]:
    script = CHILD.format(prefix_text=inspect.getsource(prefix_text))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(store), str(marker), phase],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, child: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            err = child.stderr.read() if child.stderr else ""
            raise AssertionError(f"child exited early ({child.returncode}): {err}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.05)


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL


_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


def _version_of(session: KVSession, resident: tuple[int, ...]) -> int:
    for version in _VERSIONS:
        if tuple(session.tokenize(prefix_text(version))) == resident:
            return version
    raise AssertionError("restored tokens match no version the child wrote")


def turn(session: KVSession, version: int) -> list[int]:
    session.ensure_prefix(session.prefix((("system", prefix_text(version)),)))
    session.prefill_suffix(session.suffix(QUESTION))
    return [t for c in session.decode(DecodeConfig(max_tokens=6)) for t in c.token_ids]


_cold: dict[int, list[int]] = {}


def cold(version: int) -> list[int]:
    if version not in _cold:
        with open_session(None, CFG) as session:
            _cold[version] = turn(session, version)
    return _cold[version]


def assert_store_consistent(store: Path) -> None:
    with SnapshotStore(store) as s:
        listed = s.entries()
        assert {e.workspace_id for e in listed} == {"a", "b"}
        assert all(r.status == "ok" for r in s.verify_all()), s.verify_all()
        on_disk = sorted(p.name for p in (store / SNAP_DIR).iterdir())
        assert on_disk == sorted(e.file for e in listed)  # no temp files, no orphans


@pytest.mark.parametrize(
    ("phase", "survivor", "cleaned"),
    [("mid_write", 1, "temp"), ("before_commit", 1, "orphan"), ("before_unlink", 2, "orphan"), ("evict", 1, "temp")],
)
def test_sigkill_while_writing_a_snapshot_leaves_a_consistent_store(
    tmp_path: Path, phase: str, survivor: int, cleaned: str
) -> None:
    store, marker = tmp_path / "store", tmp_path / "paused"
    child = start_child(store, marker, phase)
    wait_for(marker, child)
    kill(child)
    with SnapshotStore(store) as s:  # the killed process's lock is gone; recovery runs
        report = s.recovery
        assert (report.temp_files_removed, report.orphan_files_removed) == ((1, 0) if cleaned == "temp" else (0, 1))
        assert report.rows_removed == ()
    assert_store_consistent(store)
    with SessionPool(None, CFG, store_dir=store) as pool:
        with pool.session("a") as s:
            assert s.explain_context().last_divergence.cause == "restored"  # type: ignore[union-attr]
            assert s.resident_tokens() == tuple(s.tokenize(prefix_text(survivor)))
            assert turn(s, survivor) == cold(survivor)
        with pool.session("b") as s:
            assert turn(s, 3) == cold(3)
        assert pool.stats().restores == 2


@pytest.mark.slow
def test_sigkill_at_random_times_never_leaves_an_unloadable_snapshot(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for attempt in range(6):
        store, marker = tmp_path / f"store{attempt}", tmp_path / f"m{attempt}"
        child = start_child(store, marker, "loop")
        wait_for(Path(f"{marker}.ready"), child)
        time.sleep(rng.uniform(0.0, 3.0))
        kill(child)
        assert_store_consistent(store)
        with SessionPool(None, CFG, store_dir=store) as pool, pool.session("a") as s:
            assert s.explain_context().last_divergence.cause == "restored"  # type: ignore[union-attr]
            version = _version_of(s, s.resident_tokens())
            assert turn(s, version) == cold(version)
