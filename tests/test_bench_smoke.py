"""Smoke test of the session-core benchmark: `bench/bench_core.py --quick` runs and writes its results."""

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
        [sys.executable, str(REPO / "bench" / "bench_core.py"), "--quick", "--out", str(out), "--no-plot"],
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
        [sys.executable, str(REPO / "bench" / "bench_startup.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seconds = json.loads(out.read_text())["seconds"]
    assert seconds["digest, remembered"]["median"] < seconds["digest, page cache warm"]["median"]
    assert "| digest, remembered |" in proc.stdout
