"""Smoke test of the session-core benchmark: `python -m bench.core --quick` runs and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_core_quick(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.core", "--quick", "--out", str(out), "--no-plot"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["prompt"]["prefix_tokens"] == 256
    assert set(results["targets"]) == {
        "warm TTFT vs floor",
        "prefill tok/s vs raw",
        "decode tok/s vs raw",
        "unchanged prefix ms (100 KB)",
        "warm TTFT vs Llama",
    }
    assert all(t["verdict"] in ("PASS", "MISS") for t in results["targets"].values())
    assert results["warm"]["ttft_ms"]["llamanode"]["n"] == 2
    assert "### Targets" in proc.stdout
    assert out.with_suffix(".md").is_file()


@pytest.mark.slow
def test_bench_startup_smoke(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    args = ["--size-gb", "0.2", "--reps", "1", "--dir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.startup", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seconds = json.loads(out.read_text())["seconds"]
    assert seconds["digest, remembered"]["median"] < seconds["digest, page cache warm"]["median"]
    assert "| digest, remembered |" in proc.stdout


@pytest.mark.slow
def test_bench_server_compare_tiny(tmp_path: Path) -> None:
    """The before/after server comparison at tiny sizes: it runs, and the load run saw no error but 429s."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.server", "--compare", "--overhead-reps", "3",
         "--turns", "2", "--context-tokens", "256", "--max-tokens", "4", "--threads", "1", "--ctx", "2048",
         "--think-s", "0", "--load-seconds", "5", "--load-clients", "8", "--load-workspaces", "2",
         "--load-max-tokens", "4", "--out", str(tmp_path / "server.md")],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "server-compare.json").read_text())
    assert set(results["overhead"]) == set(results["load"]) == {"before (55c71c3)", "after (this tree)"}
    for load in results["load"].values():
        assert load["ok"] > 0 and load["other_errors"] == {}
    assert "overhead p50 ms" in (tmp_path / "server-compare.md").read_text()
