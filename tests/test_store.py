"""Snapshot format and SnapshotStore on synthetic states: no model needed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest

from llamanode.errors import SnapshotCorruptError, SnapshotError, SnapshotMismatchError
from llamanode.identity import require_identity
from llamanode.manifest import ContextManifest, ManifestSegment
from llamanode.session import SessionState
from llamanode.snapshot import (
    FORMAT_VERSION,
    MAGIC,
    TOKEN_BLOCK,
    SnapshotIdentity,
    encode_header,
    parse_header,
    read_snapshot,
    token_chain,
)
from llamanode.store import INDEX_FILE, SNAP_DIR, TMP_PREFIX, WRITE_PHASES, SnapshotStore

KV_CONFIG = {"kv_cache_type": "f16", "flash_attn": False, "num_gpu_layers": 0, "tensor_split": [], "n_ctx": 512}
IDENTITY = SnapshotIdentity("build-1", "model-1", "tok-1", "runtime-1", KV_CONFIG)


def make_state(n_tokens: int = 300, seed: int = 0, kv_size: int = 40_000) -> SessionState:
    text = f"system prompt {seed}\n" + "x = 1\n" * 20
    manifest = ContextManifest("model-1", "tok-1", "runtime-1", "tmpl", False, (ManifestSegment.of("sys", text),))
    return SessionState(
        kv=bytes((i * 7 + seed) % 251 for i in range(kv_size)),
        tokens=tuple((i * 31 + seed) % 49152 for i in range(n_tokens)),
        prefix_len=n_tokens - 20,
        stable_len=n_tokens - 5,
        generated=5,
        manifest=manifest,
        prefix_text=text.encode(),
        model_digest="model-1",
        runtime_digest="runtime-1",
        build_id="build-1",
    )


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    s = SnapshotStore(tmp_path / "store")
    yield s  # type: ignore[misc]
    s.close()


def snap_path(store: SnapshotStore, workspace_id: str) -> Path:
    entry = store.get(workspace_id)
    assert entry is not None
    return store.path_of(entry)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def rewrite_header(path: Path, **changes: object) -> None:
    """Change header fields and re-checksum the header (and the index's size): only identity checks
    can refuse it now, as if another configuration had written it."""
    data = path.read_bytes()
    header, offset = parse_header(data)
    path.write_bytes(encode_header(dataclasses.replace(header, **changes)) + data[offset:])  # type: ignore[arg-type]
    db = sqlite3.connect(path.parent.parent / INDEX_FILE)
    db.execute("UPDATE snapshots SET size_bytes=? WHERE file=?", (path.stat().st_size, path.name))
    db.commit()
    db.close()


# -- format ----------------------------------------------------------------------------------------
def test_token_chain_is_chained_by_block() -> None:
    tokens = list(range(3 * TOKEN_BLOCK + 5))
    chain = token_chain(tokens)
    assert len(chain) == 4
    assert token_chain(tokens[: 2 * TOKEN_BLOCK]) == chain[:2]
    changed = list(tokens)
    changed[TOKEN_BLOCK + 1] = 7
    other = token_chain(changed)
    assert other[0] == chain[0] and other[1] != chain[1] and other[2] != chain[2]  # a change flows down the chain


def test_roundtrip_restores_every_field(store: SnapshotStore) -> None:
    state = make_state()
    entry, collected = store.put("ws-1", state, IDENTITY)
    assert collected == []
    assert entry.n_tokens == 300 and entry.tokens == state.tokens and entry.chain == token_chain(state.tokens)
    assert entry.size_bytes == snap_path(store, "ws-1").stat().st_size
    _, loaded = store.load("ws-1", IDENTITY)
    assert loaded == state
    with snap_path(store, "ws-1").open("rb") as f:
        header, _ = read_snapshot(f, None)
    assert header.workspace_id == "ws-1" and header.kv_config == KV_CONFIG
    assert header.manifest_digest == state.manifest.digest


def test_index_is_sqlite_in_wal_mode(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    db = sqlite3.connect(store.root / INDEX_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT workspace_id FROM snapshots").fetchall() == [("ws-1",)]
    db.close()


def test_replacing_a_snapshot_removes_the_old_file(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(seed=1), IDENTITY)
    old = snap_path(store, "ws-1")
    store.put("ws-1", make_state(seed=2), IDENTITY)
    assert not old.exists()
    assert len(list((store.root / SNAP_DIR).iterdir())) == 1
    assert store.load("ws-1", IDENTITY)[1] == make_state(seed=2)


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["payload_kv", "payload_tokens", "header"])
def test_flipped_bytes_are_refused_as_corrupt_and_removed(store: SnapshotStore, where: str) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    path = snap_path(store, "ws-1")
    size = path.stat().st_size
    offset = {"payload_kv": size - 100, "payload_tokens": size - 40_000 - 200, "header": 40}[where]
    flip_byte(path, offset)
    with pytest.raises(SnapshotCorruptError):
        store.load("ws-1", IDENTITY)
    assert store.get("ws-1") is None and not path.exists()


def test_truncation_is_refused_as_corrupt(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    path = snap_path(store, "ws-1")
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(SnapshotCorruptError, match="bytes"):
        store.load("ws-1", IDENTITY)
    assert store.get("ws-1") is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model_digest": "model-2"}, "model_digest"),
        ({"build_id": "build-2"}, "build_id"),
        ({"tokenizer_digest": "tok-2"}, "tokenizer_digest"),
        ({"kv_config": {**KV_CONFIG, "kv_cache_type": "q8_0"}}, "kv_config.kv_cache_type"),
        ({"kv_config": {**KV_CONFIG, "n_ctx": 1024}}, "kv_config.n_ctx"),
        ({"runtime_digest": "runtime-2"}, "runtime_digest"),
        ({"format_version": 99}, "format_version"),
    ],
)
def test_identity_fields_refuse_even_with_a_valid_checksum(
    store: SnapshotStore, changes: dict[str, object], field: str
) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    path = snap_path(store, "ws-1")
    rewrite_header(path, **changes)
    store.close()
    reopened = SnapshotStore(store.root)  # the re-checksummed header passes recovery
    try:
        assert reopened.get("ws-1") is not None
        with pytest.raises(SnapshotMismatchError) as info:
            reopened.load("ws-1", IDENTITY)
        assert info.value.field == field
        assert reopened.get("ws-1") is not None  # another configuration's snapshot is kept, never loaded
    finally:
        reopened.close()


def test_manifest_identity_is_checked_too(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    path = snap_path(store, "ws-1")
    header, _ = parse_header(path.read_bytes())
    manifest = {**header.manifest, "model_digest": "model-2"}
    rewrite_header(path, manifest=manifest)
    with pytest.raises(SnapshotMismatchError) as info:
        store.load("ws-1", IDENTITY)
    assert info.value.field == "manifest.model_digest"


def test_the_approximate_mark_round_trips_in_format_2(store: SnapshotStore) -> None:
    state = dataclasses.replace(make_state(), approximate_from=120)
    store.put("ws-1", state, IDENTITY)
    _, loaded = store.load("ws-1", IDENTITY)
    header, _ = parse_header(snap_path(store, "ws-1").read_bytes())
    assert header.format_version == FORMAT_VERSION == 2 and header.approximate_from == 120
    assert loaded == state


def test_a_version_1_snapshot_still_loads_as_exact(store: SnapshotStore) -> None:
    """Version 1 (before approximate reuse) wrote no approximate_from: its KV is exact."""
    state = make_state()
    store.put("ws-1", state, IDENTITY)
    path = snap_path(store, "ws-1")
    data = path.read_bytes()
    header, offset = parse_header(data)
    fields = {**dataclasses.asdict(header), "format_version": 1}
    del fields["approximate_from"]
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()  # the version-1 encoder
    path.write_bytes(MAGIC + struct.pack("<I", len(body)) + body + hashlib.sha256(body).digest() + data[offset:])
    db = sqlite3.connect(path.parent.parent / INDEX_FILE)
    db.execute("UPDATE snapshots SET size_bytes=? WHERE file=?", (path.stat().st_size, path.name))
    db.commit()
    db.close()
    assert b"approximate_from" not in path.read_bytes()[: offset + 64]
    _, loaded = store.load("ws-1", IDENTITY)
    assert parse_header(path.read_bytes())[0].format_version == 1
    assert loaded == state and loaded.approximate_from is None


@pytest.mark.parametrize("mark", [-1, 300, "7"])
def test_an_impossible_approximate_mark_is_corrupt(store: SnapshotStore, mark: object) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    rewrite_header(snap_path(store, "ws-1"), approximate_from=mark)
    with pytest.raises(SnapshotCorruptError, match="approximate_from"):
        store.load("ws-1", IDENTITY)


def test_inconsistent_header_is_corrupt(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    path = snap_path(store, "ws-1")
    rewrite_header(path, n_tokens=299)
    with pytest.raises(SnapshotCorruptError):
        store.load("ws-1", IDENTITY)


def test_verify_all_reports_each_snapshot(store: SnapshotStore) -> None:
    for i in range(3):
        store.put(f"ws-{i}", make_state(seed=i), IDENTITY)
    flip_byte(snap_path(store, "ws-1"), snap_path(store, "ws-1").stat().st_size - 10)
    rewrite_header(snap_path(store, "ws-2"), build_id="build-2")
    by_id = {r.workspace_id: r.status for r in store.verify_all(IDENTITY)}
    assert by_id == {"ws-0": "ok", "ws-1": "corrupt", "ws-2": "mismatch"}
    assert {r.workspace_id: r.status for r in store.verify_all()} == {"ws-0": "ok", "ws-1": "corrupt", "ws-2": "ok"}
    store.verify_all(remove_bad=True)
    assert [e.workspace_id for e in store.entries()] != [] and store.get("ws-1") is None


# -- crash recovery and budgets ---------------------------------------------------------------------
def test_recovery_removes_temp_files_orphans_and_broken_rows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with SnapshotStore(root) as store:
        for i in range(3):
            store.put(f"ws-{i}", make_state(seed=i), IDENTITY)
        missing = snap_path(store, "ws-0")
        truncated = snap_path(store, "ws-1")
    snaps = root / SNAP_DIR
    (snaps / f"{TMP_PREFIX}ws-9-half.snap").write_bytes(b"partial")
    (snaps / "ws-8-orphan.snap").write_bytes(b"never indexed")
    missing.unlink()
    os.truncate(truncated, 100)
    with SnapshotStore(root) as store:
        report = store.recovery
        assert report.temp_files_removed == 1 and report.orphan_files_removed == 1
        assert set(report.rows_removed) == {"ws-0", "ws-1"}
        assert [e.workspace_id for e in store.entries()] == ["ws-2"]
        assert sorted(p.name for p in snaps.iterdir()) == [store.entries()[0].file]
        assert all(r.status == "ok" for r in store.verify_all(IDENTITY))


def test_disk_budget_collects_least_recently_used(tmp_path: Path) -> None:
    size = len(make_state().kv) + 4 * 300 + 2000
    with SnapshotStore(tmp_path / "s", disk_budget_bytes=int(2.5 * size)) as store:
        store.put("a", make_state(seed=1), IDENTITY)
        store.put("b", make_state(seed=2), IDENTITY)
        store.touch("a")  # b is now the least recently used
        _, collected = store.put("c", make_state(seed=3), IDENTITY)
        assert collected == ["b"]
        assert sorted(e.workspace_id for e in store.entries()) == ["a", "c"]
        _, collected = store.put("d", make_state(seed=4), IDENTITY, protect={"a"})
        assert collected == ["c"]
        assert store.total_bytes() <= int(2.5 * size)


def test_newest_snapshot_survives_a_tiny_disk_budget(tmp_path: Path) -> None:
    with SnapshotStore(tmp_path / "s", disk_budget_bytes=10) as store:
        store.put("a", make_state(seed=1), IDENTITY)
        _, collected = store.put("b", make_state(seed=2), IDENTITY)
        assert collected == ["a"] and [e.workspace_id for e in store.entries()] == ["b"]


def test_exclusive_lock_and_read_only_inspection(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with SnapshotStore(root) as store:
        store.put("a", make_state(), IDENTITY)
        with pytest.raises(SnapshotError, match="in use"):
            SnapshotStore(root)
        with SnapshotStore(root, exclusive=False) as reader:
            assert [e.workspace_id for e in reader.entries()] == ["a"]
            assert reader.verify_all(IDENTITY)[0].status == "ok"
            with pytest.raises(SnapshotError, match="read-only"):
                reader.put("b", make_state(), IDENTITY)
    with SnapshotStore(root) as again:  # the lock is released on close
        assert again.get("a") is not None


def test_read_only_store_of_an_empty_dir(tmp_path: Path) -> None:
    with SnapshotStore(tmp_path / "nothing", exclusive=False) as reader:
        assert reader.entries() == [] and reader.total_bytes() == 0


def test_header_is_self_describing_json(store: SnapshotStore) -> None:
    store.put("ws-1", make_state(), IDENTITY)
    header, _ = parse_header(snap_path(store, "ws-1").read_bytes())
    for key in ("build_id", "model_digest", "runtime_digest", "manifest_digest", "token_chain", "payload_sha256"):
        assert getattr(header, key)
    assert json.loads(json.dumps(dataclasses.asdict(header)))["kv_config"] == KV_CONFIG


def test_a_failed_write_is_typed_and_leaves_the_previous_snapshot(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("ws-1", make_state(seed=1), IDENTITY)

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llamanode.store._write_all", disk_full)
    with pytest.raises(SnapshotError, match="No space left"):
        store.put("ws-1", make_state(seed=2), IDENTITY)
    assert sorted(p.name for p in (store.root / SNAP_DIR).iterdir()) == [snap_path(store, "ws-1").name]
    assert store.load("ws-1", IDENTITY)[1] == make_state(seed=1)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"build_id": "build-2"}, "build_id"),
        ({"model_digest": "model-2"}, "model_digest"),
        ({"runtime_digest": "runtime-2"}, "runtime_digest"),
    ],
)
def test_a_state_in_memory_and_its_snapshot_are_refused_for_the_same_field(
    store: SnapshotStore, changes: dict[str, str], field: str
) -> None:
    """One identity rule: KVSession.import_state (a state in memory) and the store (a file) agree."""
    state = dataclasses.replace(make_state(), **changes)  # type: ignore[arg-type]
    require_identity(SnapshotIdentity.of_state(make_state(), KV_CONFIG), make_state().manifest, IDENTITY)
    with pytest.raises(SnapshotMismatchError) as in_memory:
        require_identity(SnapshotIdentity.of_state(state, KV_CONFIG), state.manifest, IDENTITY)
    store.put("ws-1", state, IDENTITY)
    with pytest.raises(SnapshotMismatchError) as on_disk:
        store.load("ws-1", IDENTITY)
    assert in_memory.value.field == on_disk.value.field == field


def test_the_write_phase_seam_sees_every_step_and_a_crash_there_recovers(tmp_path: Path) -> None:
    seen: list[str] = []
    with SnapshotStore(tmp_path / "s", on_write_phase=seen.append) as store:
        store.put("ws-1", make_state(seed=1), IDENTITY)
    assert seen == list(WRITE_PHASES)

    class Crash(BaseException):
        pass

    def crash_before_commit(phase: str) -> None:
        if phase == "before_commit":
            raise Crash  # what a SIGKILL there would leave behind: a renamed file nobody indexed

    store = SnapshotStore(tmp_path / "s", on_write_phase=crash_before_commit)
    with pytest.raises(Crash):
        store.put("ws-1", make_state(seed=2), IDENTITY)
    store.close()
    with SnapshotStore(tmp_path / "s") as reopened:
        assert reopened.recovery.orphan_files_removed == 1
        assert reopened.load("ws-1", IDENTITY)[1] == make_state(seed=1)
