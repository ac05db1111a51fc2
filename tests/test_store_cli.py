"""`llamanode workspaces` and `llamanode snapshot verify` on a store of synthetic snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamanode.cli import main
from llamanode.store import SnapshotStore
from test_store import IDENTITY, flip_byte, make_state, snap_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with SnapshotStore(tmp_path / "store") as store:
        for i, name in enumerate(("alpha", "beta", "gamma")):
            store.put(name, make_state(seed=i), IDENTITY)
    return tmp_path / "store"


def test_workspaces_list_stats_and_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workspaces", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 workspace(s)" in out and all(name in out for name in ("alpha", "beta", "gamma"))
    assert main(["workspaces", "--store", str(root), "--json", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["workspaces"] == 3 and stats["tokens"] == 900 and stats["models"] == {"model-1": 3}
    assert main(["workspaces", "--store", str(root), "--json", "list"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["workspace_id"] for r in rows} == {"alpha", "beta", "gamma"} and "tokens" not in rows[0]


def test_workspaces_drop(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workspaces", "--store", str(root), "drop", "beta"]) == 0
    assert main(["workspaces", "--store", str(root), "drop", "beta"]) == 1
    assert "no workspace 'beta'" in capsys.readouterr().out
    with SnapshotStore(root) as store:
        assert sorted(e.workspace_id for e in store.entries()) == ["alpha", "gamma"]
        assert main(["workspaces", "--store", str(root), "drop", "alpha"]) == 2  # the store is in use
        assert "in use" in capsys.readouterr().err


def test_snapshot_verify_finds_and_removes_damage(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "verify", "--store", str(root)]) == 0
    assert "3 ok, 0 bad" in capsys.readouterr().out
    with SnapshotStore(root) as store:
        path = snap_path(store, "beta")
    flip_byte(path, path.stat().st_size - 5)
    with SnapshotStore(root) as store:  # verifying read-only works beside a running pool's store
        assert main(["snapshot", "verify", "--store", str(root)]) == 1
    out = capsys.readouterr().out
    assert "corrupt  beta" in out and "2 ok, 1 bad" in out
    assert main(["snapshot", "verify", "--store", str(root), "--remove", "--json"]) == 1
    assert {r["workspace_id"]: r["status"] for r in json.loads(capsys.readouterr().out)}["beta"] == "corrupt"
    assert main(["snapshot", "verify", "--store", str(root)]) == 0
    assert "2 ok, 0 bad of 2" in capsys.readouterr().out


def test_default_store_dir_follows_llamanode_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMANODE_HOME", str(tmp_path / "home"))
    assert main(["workspaces"]) == 0
    assert f"0 workspace(s) in {tmp_path / 'home'}" in capsys.readouterr().out
