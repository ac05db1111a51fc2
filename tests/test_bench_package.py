"""bench/ is a package: every entry point runs as `python -m bench.<name>` from the repo root, and nothing
in bench/ or tests/ edits sys.path to reach it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
ENTRY_POINTS = sorted(p.stem for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_the_renamed_entry_points_are_there() -> None:
    renamed = {"core", "pool", "server", "startup", "trace", "agents", "unchanged_prefix"}
    assert renamed <= set(ENTRY_POINTS)
    assert not list(BENCH.glob("bench_*.py"))


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_answers_help(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:")


def test_nothing_edits_sys_path() -> None:
    edits = re.compile(r"sys\.path\.(insert|append)")
    files = [p for d in (BENCH, REPO / "tests") for p in d.glob("*.py")]
    assert [str(p.relative_to(REPO)) for p in files if edits.search(p.read_text())] == []
