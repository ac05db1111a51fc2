"""Model digests remembered across processes (llamanode.digest_cache), on real files and processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamanode import digest_cache
from llamanode.digest_cache import CACHE_FILE, default_cache_dir, file_digest


class HashCounter:
    def __init__(self) -> None:
        self.paths: list[Path] = []


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[HashCounter]:
    """Counts real hashes; the in-process memo is emptied so every call asks the cache."""
    counter = HashCounter()
    real = digest_cache._hash_file

    def counting(path: Path) -> str:
        counter.paths.append(path)
        return real(path)

    monkeypatch.setattr(digest_cache, "_hash_file", counting)
    digest_cache._memo.clear()
    yield counter
    digest_cache._memo.clear()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh(cache: Path, path: Path) -> str:
    """file_digest as a new process would call it (no in-process memo)."""
    digest_cache._memo.clear()
    return file_digest(path, cache)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(3 << 20))
    return path


def test_a_digest_is_hashed_once_then_remembered(tmp_path: Path, model_file: Path, hashed: HashCounter) -> None:
    cache = tmp_path / "cache"
    assert _fresh(cache, model_file) == _sha(model_file)
    assert _fresh(cache, model_file) == _sha(model_file)
    assert len(hashed.paths) == 1 and (cache / CACHE_FILE).is_file()


def _touch_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _same_size_rewrite(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    st = path.stat()
    with path.open("r+b") as f:  # in place: same inode, same size, mtime put back
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(path: Path) -> None:
    other = path.with_suffix(".new")
    other.write_bytes(path.read_bytes()[:-1] + b"x")
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.replace(path)  # another inode


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"more")


@pytest.mark.parametrize(
    "change", [_touch_mtime, _same_size_rewrite, _replace, _append], ids=["mtime", "rewrite", "inode", "size"]
)
def test_any_change_to_the_file_means_a_fresh_hash(
    tmp_path: Path, model_file: Path, hashed: HashCounter, change: Callable[[Path], None]
) -> None:
    cache = tmp_path / "cache"
    before = _fresh(cache, model_file)
    time.sleep(0.01)  # ctime moves on filesystems with coarse timestamps
    change(model_file)
    after = _fresh(cache, model_file)
    assert after == _sha(model_file) and len(hashed.paths) == 2
    assert (after != before) == (change is not _touch_mtime)


def test_a_corrupt_cache_file_is_replaced_and_the_digest_recomputed(
    tmp_path: Path, model_file: Path, hashed: HashCounter
) -> None:
    cache = tmp_path / "cache"
    _fresh(cache, model_file)
    (cache / CACHE_FILE).write_bytes(b"this is not a database" * 100)
    assert _fresh(cache, model_file) == _sha(model_file)
    assert _fresh(cache, model_file) == _sha(model_file)
    assert len(hashed.paths) == 2, "hashed once at first, once after the corruption, then remembered again"


def test_an_unwritable_cache_costs_a_hash_not_a_wrong_digest(tmp_path: Path, model_file: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file")
    assert _fresh(blocker / "cache", model_file) == _sha(model_file)


_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from llamanode.digest_cache import file_digest
    cache = Path(sys.argv[1])
    print(" ".join(file_digest(Path(p), cache) for p in sys.argv[2:]))
    """
)
_REMEMBERED_ONLY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from llamanode import digest_cache
    def refuse(path):
        raise AssertionError(f"hashed {path} although it was remembered")
    digest_cache._hash_file = refuse
    print(" ".join(digest_cache.file_digest(Path(p), Path(sys.argv[1])) for p in sys.argv[2:]))
    """
)


def test_concurrent_processes_share_one_cache_and_lose_no_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = []
    for i in range(6):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(os.urandom(1 << 20) + bytes([i]))
        files.append(path)
    orders = [files[i:] + files[:i] for i in range(len(files))]  # every worker writes every file, in another order
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(cache), *map(str, order)], stdout=subprocess.PIPE, text=True
        )
        for order in orders
    ]
    expected = {str(p): _sha(p) for p in files}
    for proc, order in zip(procs, orders, strict=True):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert out.split() == [expected[str(p)] for p in order]
    check = subprocess.run(
        [sys.executable, "-c", _REMEMBERED_ONLY, str(cache), *map(str, files)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == [expected[str(p)] for p in files]


def test_the_cache_directory_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMANODE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LLAMANODE_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "llamanode"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "llamanode"


def test_loading_the_model_remembers_its_digest_for_the_next_process(model_keeper: object) -> None:
    from llamanode import default_model_path

    model = default_model_path()
    check = subprocess.run(
        [sys.executable, "-c", _REMEMBERED_ONLY, str(default_cache_dir()), str(model)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == _sha(model)
