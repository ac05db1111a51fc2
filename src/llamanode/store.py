"""SnapshotStore: one snapshot per workspace, written atomically, indexed in SQLite, bounded by a disk budget.

Write protocol: temp file (O_EXCL) -> fsync -> rename -> fsync dir -> index commit -> unlink the old file.
A crash at any point leaves either the old or the new snapshot listed; recover() removes the rest.
`on_write_phase` is called between those steps (mid_write | before_commit | before_unlink): the seam
through which crash tests stop a writer where a SIGKILL must leave a consistent store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SnapshotCorruptError, SnapshotError, SnapshotMismatchError
from .session import SessionState
from .snapshot import (
    SnapshotHeader,
    SnapshotIdentity,
    build_header,
    encode_header,
    payload_parts,
    read_header,
    read_snapshot,
)
from .store_index import SnapshotEntry, SnapshotIndex, new_entry

__all__ = [
    "WRITE_PHASES",
    "RecoveryReport",
    "SnapshotEntry",
    "SnapshotStore",
    "VerifyResult",
    "default_store_dir",
]

SNAP_DIR = "snapshots"
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "store.lock"
TMP_PREFIX = ".tmp-"
SUFFIX = ".snap"
WRITE_PHASES = ("mid_write", "before_commit", "before_unlink")  # where on_write_phase is called
WritePhaseHook = Callable[[str], None]


def default_store_dir() -> Path:
    """$LLAMANODE_HOME, else ~/.cache/llamanode."""
    home = os.environ.get("LLAMANODE_HOME")
    return Path(home) if home else Path.home() / ".cache" / "llamanode"


@dataclass(frozen=True)
class RecoveryReport:
    """What recover() cleaned up at open: temp files, unindexed files, and rows without a sound file."""

    temp_files_removed: int
    orphan_files_removed: int
    rows_removed: tuple[str, ...]


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one snapshot: status is ok | corrupt | mismatch | missing."""

    workspace_id: str
    file: str
    size_bytes: int
    status: str
    detail: str = ""


class SnapshotStore:
    """Snapshot files under root/snapshots, indexed in root/index.sqlite3 (WAL).

    exclusive=True (the default) takes root/store.lock for the life of the store, recovers after a crash,
    and allows writes; exclusive=False opens read-only for inspection alongside a running pool.
    on_write_phase(phase), if given, runs at each step of the write protocol (see WRITE_PHASES).
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        disk_budget_bytes: int | None = None,
        exclusive: bool = True,
        on_write_phase: WritePhaseHook | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_store_dir()
        self.disk_budget_bytes = disk_budget_bytes
        self.exclusive = exclusive
        self._dir = self.root / SNAP_DIR
        self._lock = threading.RLock()
        self._on_write_phase = on_write_phase
        self._lock_fd: int | None = None
        self._closed = False
        if exclusive:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _take_lock(self.root / LOCK_FILE)
        self._index = SnapshotIndex(self.root / INDEX_FILE, writable=exclusive)
        self.recovery = self.recover() if exclusive else RecoveryReport(0, 0, ())

    # -- open / close --------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._index.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries -------------------------------------------------------------------------------
    def entries(self) -> list[SnapshotEntry]:
        return self._index.entries()

    def get(self, workspace_id: str) -> SnapshotEntry | None:
        return self._index.get(workspace_id)

    def total_bytes(self) -> int:
        return self._index.total_bytes()

    def path_of(self, entry: SnapshotEntry) -> Path:
        return self._dir / entry.file

    # -- writing -------------------------------------------------------------------------------
    def put(
        self,
        workspace_id: str,
        state: SessionState,
        identity: SnapshotIdentity,
        protect: Iterable[str] = (),
        order: Sequence[str] = (),
    ) -> tuple[SnapshotEntry, list[str]]:
        """Write state as workspace_id's snapshot (atomically), then collect garbage down to the disk budget
        (see collect_garbage for protect and order).

        Returns the new entry and the workspaces whose snapshots the collection removed.
        """
        self._check_writable()
        header = build_header(workspace_id, state, identity)
        name = f"{_slug(workspace_id)}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        try:
            size = self._write_atomically(name, [encode_header(header), *payload_parts(state)])
            entry = new_entry(workspace_id, name, size, header, state.tokens, identity)
            self._phase("before_commit")
            old = self._index.replace(entry)
        except (OSError, sqlite3.Error) as exc:
            _unlink(self._dir / name)
            raise SnapshotError(f"could not write the snapshot of {workspace_id!r}: {exc}") from exc
        self._phase("before_unlink")
        if old is not None and old != name:
            _unlink(self._dir / old)
        collected = self.collect_garbage({workspace_id, *protect}, order)
        return entry, collected

    def _write_atomically(self, name: str, parts: Sequence[bytes]) -> int:
        tmp = self._dir / f"{TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        size = 0
        try:
            for i, part in enumerate(parts):
                _write_all(fd, part)
                size += len(part)
                if i == 1:
                    self._phase("mid_write")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self._dir / name)
        _fsync_dir(self._dir)
        return size

    def remove(self, workspace_id: str) -> bool:
        """Forget workspace_id's snapshot (index row first, then the file). False if there was none."""
        self._check_writable()
        with self._lock:
            file = self._index.remove(workspace_id)
        if file is None:
            return False
        _unlink(self._dir / file)
        return True

    def touch(self, workspace_id: str, when: float | None = None) -> None:
        if not self.exclusive:
            return
        self._index.touch(workspace_id, when or time.time())

    def collect_garbage(self, protect: Iterable[str] = (), order: Sequence[str] = ()) -> list[str]:
        """Remove snapshots until the disk budget holds, never a protected one: those the order does not name
        first (least recently used first), then those it names, in its order (the pool's keeping rank)."""
        if self.disk_budget_bytes is None or not self.exclusive:
            return []
        keep = set(protect)
        place = {workspace_id: i for i, workspace_id in enumerate(order)}
        removed: list[str] = []
        total = self.total_bytes()
        for entry in sorted(self.entries(), key=lambda e: (place.get(e.workspace_id, -1), e.last_used)):
            if total <= self.disk_budget_bytes:
                break
            if entry.workspace_id in keep:
                continue
            if self.remove(entry.workspace_id):
                removed.append(entry.workspace_id)
                total -= entry.size_bytes
        return removed

    # -- reading -------------------------------------------------------------------------------
    def load(self, workspace_id: str, expected: SnapshotIdentity) -> tuple[SnapshotEntry, SessionState]:
        """The verified state of workspace_id's snapshot. A corrupt snapshot is removed, then refused
        (SnapshotCorruptError); one of another model, build or config is refused (SnapshotMismatchError)."""
        entry = self.get(workspace_id)
        if entry is None:
            raise SnapshotError(f"no snapshot of workspace {workspace_id!r}")
        try:
            state = self._read_verified(entry, expected)
        except SnapshotCorruptError:
            if self.exclusive:
                self.remove(workspace_id)
            raise
        self.touch(workspace_id)
        return entry, state

    def _read_verified(self, entry: SnapshotEntry, expected: SnapshotIdentity | None) -> SessionState:
        try:
            with open(self._dir / entry.file, "rb") as f:
                header, state = read_snapshot(f, expected)
        except FileNotFoundError as exc:
            raise SnapshotCorruptError(f"snapshot file {entry.file} is missing") from exc
        except OSError as exc:
            raise SnapshotCorruptError(f"snapshot file {entry.file} cannot be read: {exc}") from exc
        _check_matches_index(header, entry)
        return state

    def verify(self, entry: SnapshotEntry, expected: SnapshotIdentity | None = None) -> VerifyResult:
        """Check one snapshot completely (checksums, sizes, token chain; identity if expected is given)."""
        try:
            self._read_verified(entry, expected)
        except SnapshotMismatchError as exc:
            return VerifyResult(entry.workspace_id, entry.file, entry.size_bytes, "mismatch", str(exc))
        except SnapshotCorruptError as exc:
            status = "missing" if not (self._dir / entry.file).exists() else "corrupt"
            return VerifyResult(entry.workspace_id, entry.file, entry.size_bytes, status, str(exc))
        return VerifyResult(entry.workspace_id, entry.file, entry.size_bytes, "ok")

    def verify_all(self, expected: SnapshotIdentity | None = None, remove_bad: bool = False) -> list[VerifyResult]:
        """verify() every listed snapshot; remove_bad drops the corrupt and missing ones."""
        results = [self.verify(entry, expected) for entry in self.entries()]
        if remove_bad:
            for result in results:
                if result.status in ("corrupt", "missing"):
                    self.remove(result.workspace_id)
        return results

    # -- crash recovery ------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Make the store consistent after a crash: drop temp files, rows whose file is missing or whose
        header or size is wrong, and files no row lists. Payload checksums are checked on load."""
        self._check_writable()
        temps = 0
        for path in self._dir.glob(f"{TMP_PREFIX}*"):
            _unlink(path)
            temps += 1
        bad = [e.workspace_id for e in self.entries() if not self._header_sound(e)]
        for workspace_id in bad:
            self.remove(workspace_id)
        listed = {e.file for e in self.entries()}
        orphans = [p for p in self._dir.glob(f"*{SUFFIX}") if p.name not in listed]
        for path in orphans:
            _unlink(path)
        _fsync_dir(self._dir)
        return RecoveryReport(temps, len(orphans), tuple(bad))

    def _header_sound(self, entry: SnapshotEntry) -> bool:
        path = self._dir / entry.file
        try:
            if path.stat().st_size != entry.size_bytes:
                return False
            with open(path, "rb") as f:
                header, _ = read_header(f)
            _check_matches_index(header, entry)
        except (OSError, SnapshotError):
            return False
        return True

    def _phase(self, phase: str) -> None:
        if self._on_write_phase is not None:
            self._on_write_phase(phase)

    def _check_writable(self) -> None:
        if self._closed:
            raise SnapshotError("snapshot store is closed")
        if not self.exclusive:
            raise SnapshotError("snapshot store was opened read-only")


# -- helpers -------------------------------------------------------------------------------------
def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
        os.close(fd)
        raise SnapshotError(f"snapshot store {path.parent} is in use by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _check_matches_index(header: SnapshotHeader, entry: SnapshotEntry) -> None:
    if header.workspace_id != entry.workspace_id or header.token_chain != entry.chain:
        raise SnapshotCorruptError(f"snapshot {entry.file} does not match its index row")


def _slug(workspace_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", workspace_id)[:48].lstrip(".") or "ws"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 1 << 24])
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
