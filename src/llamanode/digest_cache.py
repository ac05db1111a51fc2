"""The sha256 of a model file, remembered across processes.

Hashing a multi-GB GGUF takes seconds at every start. The digest is kept in a small SQLite file in
the user cache directory, keyed by the file's resolved path and the stat fields that change when
its bytes may have changed (size, mtime, ctime, inode, device): any difference means a fresh hash.
SQLite does the locking between concurrent writers; a cache file that is not a database is
replaced, and a cache that cannot be written only costs the hash, never a wrong digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CACHE_FILE", "default_cache_dir", "file_digest"]

CACHE_FILE = "digests.sqlite"
_CHUNK = 8 << 20
_ATTEMPTS = 3  # a file that keeps changing while it is hashed is refused after this many tries
_SCHEMA = """CREATE TABLE IF NOT EXISTS digests (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, device INTEGER,
    sha256 TEXT NOT NULL)"""

FileKey = tuple[str, int, int, int, int, int]  # resolved path, size, mtime_ns, ctime_ns, inode, device

_log = logging.getLogger(__name__)
_memo: dict[FileKey, str] = {}
_memo_lock = threading.Lock()


def default_cache_dir() -> Path:
    """$LLAMANODE_CACHE_DIR, else $XDG_CACHE_HOME/llamanode, else ~/.cache/llamanode."""
    explicit = os.environ.get("LLAMANODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamanode"


def file_digest(path: str | os.PathLike[str], cache_dir: Path | None = None) -> str:
    """sha256 (hex) of a file's bytes, from the cache when the file is unchanged since it was hashed."""
    key = _file_key(Path(path))
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    db = (cache_dir or default_cache_dir()) / CACHE_FILE
    digest = _remembered(db, key)
    if digest is None:
        key, digest = _hash_stable(Path(path), key)
        _remember(db, key, digest)
    with _memo_lock:
        _memo[key] = digest
    return digest


def _file_key(path: Path) -> FileKey:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _hash_stable(path: Path, key: FileKey) -> tuple[FileKey, str]:
    """Hash until the file's stat is the same before and after (a file being written is not remembered)."""
    for _ in range(_ATTEMPTS):
        digest = _hash_file(path)
        after = _file_key(path)
        if after == key:
            return key, digest
        key = after
    raise OSError(f"{path} kept changing while it was hashed")


@contextlib.contextmanager
def _connect(db: Path) -> Iterator[sqlite3.Connection]:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            conn.execute(_SCHEMA)
            yield conn
    finally:
        conn.close()


def _remembered(db: Path, key: FileKey) -> str | None:
    if not db.exists():
        return None
    try:
        with _connect(db) as conn:
            row = conn.execute(
                "SELECT sha256 FROM digests WHERE path=? AND size=? AND mtime_ns=? AND ctime_ns=? AND inode=?"
                " AND device=?",
                key,
            ).fetchone()
    except sqlite3.DatabaseError as exc:
        _discard_if_corrupt(db, exc)
        return None
    return str(row[0]) if row else None


def _remember(db: Path, key: FileKey, digest: str, retry: bool = True) -> None:
    try:
        with _connect(db) as conn:
            conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, digest))
    except sqlite3.DatabaseError as exc:
        if _discard_if_corrupt(db, exc) and retry:
            _remember(db, key, digest, retry=False)
    except OSError as exc:
        _log.warning("model digest not remembered (%s): the next start hashes the file again", exc)


def _discard_if_corrupt(db: Path, exc: sqlite3.DatabaseError) -> bool:
    """Remove a cache file that is not a database (True); other database errors are only logged."""
    if "not a database" not in str(exc) and "malformed" not in str(exc):
        _log.warning("digest cache %s unusable (%s): hashing instead", db, exc)
        return False
    _log.warning("digest cache %s is corrupt (%s): replacing it", db, exc)
    with contextlib.suppress(FileNotFoundError):
        db.unlink()
    return True
