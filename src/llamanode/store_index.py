"""The SQLite index of snapshot files (WAL): one row per workspace, with its token ids for routing."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SnapshotError
from .identity import SnapshotIdentity
from .snapshot import SnapshotHeader, tokens_from_bytes, tokens_to_bytes

__all__ = ["SCHEMA_VERSION", "SnapshotEntry", "SnapshotIndex", "new_entry"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    workspace_id TEXT PRIMARY KEY,
    file TEXT NOT NULL UNIQUE,
    size_bytes INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    stable_len INTEGER NOT NULL,
    identity_key TEXT NOT NULL,
    model_digest TEXT NOT NULL,
    build_id TEXT NOT NULL,
    kv_config TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL,
    tokens BLOB NOT NULL,
    chain TEXT NOT NULL
)
"""
_COLUMNS = (
    "workspace_id, file, size_bytes, n_tokens, stable_len, identity_key, model_digest, build_id, kv_config,"
    " created_at, last_used, tokens, chain"
)


@dataclass(frozen=True)
class SnapshotEntry:
    """One indexed snapshot: where it is, how big, whose it is, and its token ids (for routing)."""

    workspace_id: str
    file: str
    size_bytes: int
    n_tokens: int
    stable_len: int
    identity_key: str
    model_digest: str
    build_id: str
    kv_config: str
    created_at: float
    last_used: float
    tokens: tuple[int, ...]
    chain: tuple[str, ...]


class SnapshotIndex:
    """Rows of snapshots. writable=False opens the file read-only (or an empty index if there is none)."""

    def __init__(self, path: Path, writable: bool) -> None:
        self._lock = threading.RLock()
        self._db = _connect(path, writable)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def entries(self) -> list[SnapshotEntry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY last_used DESC").fetchall()
        return [_entry(row) for row in rows]

    def get(self, workspace_id: str) -> SnapshotEntry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE workspace_id=?", (workspace_id,)).fetchone()
        return _entry(row) if row else None

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots").fetchone()[0])

    def replace(self, entry: SnapshotEntry) -> str | None:
        """Index entry in place of the workspace's previous row; returns the previous file name."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT file FROM snapshots WHERE workspace_id=?", (entry.workspace_id,)).fetchone()
            self._db.execute("DELETE FROM snapshots WHERE workspace_id=?", (entry.workspace_id,))
            self._db.execute(f"INSERT INTO snapshots ({_COLUMNS}) VALUES ({', '.join('?' * 13)})", _row(entry))
        return str(row[0]) if row else None

    def remove(self, workspace_id: str) -> str | None:
        """Delete the workspace's row; returns its file name, or None if there was no row."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT file FROM snapshots WHERE workspace_id=?", (workspace_id,)).fetchone()
            self._db.execute("DELETE FROM snapshots WHERE workspace_id=?", (workspace_id,))
        return str(row[0]) if row else None

    def touch(self, workspace_id: str, when: float) -> None:
        with self._lock:
            self._db.execute("UPDATE snapshots SET last_used=? WHERE workspace_id=?", (when, workspace_id))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def new_entry(
    workspace_id: str, name: str, size: int, header: SnapshotHeader, tokens: Sequence[int], identity: SnapshotIdentity
) -> SnapshotEntry:
    now = time.time()
    return SnapshotEntry(
        workspace_id=workspace_id,
        file=name,
        size_bytes=size,
        n_tokens=header.n_tokens,
        stable_len=header.stable_len,
        identity_key=identity.key(),
        model_digest=header.model_digest,
        build_id=header.build_id,
        kv_config=json.dumps(dict(header.kv_config), sort_keys=True),
        created_at=now,
        last_used=now,
        tokens=tuple(tokens),
        chain=header.token_chain,
    )


def _connect(path: Path, writable: bool) -> sqlite3.Connection:
    if not writable:
        if not path.exists():
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.execute(_SCHEMA)
            return db
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise SnapshotError(f"snapshot index {path} has schema {version}; this llamanode reads {SCHEMA_VERSION}")
    db.execute(_SCHEMA)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


def _row(e: SnapshotEntry) -> tuple[object, ...]:
    return (
        e.workspace_id, e.file, e.size_bytes, e.n_tokens, e.stable_len, e.identity_key, e.model_digest,
        e.build_id, e.kv_config, e.created_at, e.last_used, tokens_to_bytes(e.tokens), ",".join(e.chain),
    )  # fmt: skip


def _entry(row: Sequence[object]) -> SnapshotEntry:
    ws, file, size, n_tokens, stable, key, model, build, kv, created, used, tokens, chain = row
    assert isinstance(tokens, bytes) and isinstance(chain, str)
    links = tuple(chain.split(",")) if chain else ()
    return SnapshotEntry(
        str(ws), str(file), int(str(size)), int(str(n_tokens)), int(str(stable)), str(key), str(model), str(build),
        str(kv), float(str(created)), float(str(used)), tokens_from_bytes(tokens), links,
    )  # fmt: skip
