"""Shared benchmark helpers: timing and statistics, interleaving, timed turns, machine facts, tables.

Used by every benchmark in this package (prompt texts: prompts.py; server processes: processes.py).
The machine these run on is shared and noisy, so every comparison runs its cases interleaved in one
process (A, B, C, then C, B, A, ...) and reports medians and ratios, never a lone absolute time.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamanode import Config, DecodeConfig, KVSession

__all__ = [
    "OUT_DIR",
    "REPO",
    "RunResults",
    "SessionTurn",
    "Stats",
    "interleaved",
    "llama_turn",
    "log",
    "machine_info",
    "md_table",
    "now",
    "open_llama",
    "percentile",
    "pyplot",
    "ratio",
    "session_turn",
    "stats",
    "verdict",
    "write_json",
]

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"

now = time.perf_counter
_T0 = now()


def log(msg: str) -> None:
    """A progress line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[{now() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    p10: float
    p90: float
    p99: float
    min: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def stats(samples: Sequence[float]) -> Stats:
    if not samples:
        nan = math.nan
        return Stats(0, nan, nan, nan, nan, nan, nan, nan)
    return Stats(
        n=len(samples),
        median=statistics.median(samples),
        p10=percentile(samples, 10),
        p90=percentile(samples, 90),
        p99=percentile(samples, 99),
        min=min(samples),
        max=max(samples),
        mean=statistics.fmean(samples),
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def interleaved(
    reps: int, cases: Mapping[str, Callable[[int], float]], on_result: Callable[[str, int, float], None] | None = None
) -> dict[str, list[float]]:
    """Run every case once per repetition, reversing the order every other repetition.

    Each case gets the repetition index and returns its own measurement (it times itself, so
    set-up work stays out of the figure). Alternating A,B,C / C,B,A cancels drift and order effects.
    """
    names = list(cases)
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            value = cases[name](rep)
            out[name].append(value)
            if on_result is not None:
                on_result(name, rep, value)
    return out


# -- timed turns of the systems under test ------------------------------------------------------


@dataclass(frozen=True)
class SessionTurn:
    """One llamanode turn up to its first token, in parts (seconds), and what ensure_prefix reported."""

    ensure_s: float
    suffix_s: float
    first_s: float
    byte_hash_hit: bool
    reused: int
    prefilled: int

    @property
    def ttft(self) -> float:
        return self.ensure_s + self.suffix_s + self.first_s


def session_turn(session: KVSession, segments: Sequence[tuple[str, str]], suffix: str) -> SessionTurn:
    """One agent turn up to its first token: build the prefix, ensure it, prefill the suffix, sample."""
    t0 = now()
    status = session.ensure_prefix(session.prefix(segments))
    t1 = now()
    session.prefill_suffix(session.suffix(suffix))
    t2 = now()
    stream = session.decode(DecodeConfig(max_tokens=1))
    next(stream)  # the first chunk carries the first token (max_tokens=1: it is not decoded)
    t3 = now()
    for _ in stream:
        pass
    return SessionTurn(t1 - t0, t2 - t1, t3 - t2, status.byte_hash_hit, status.reused_tokens, status.prefilled_tokens)


def llama_turn(llm: Any, prompt: str) -> float:
    """`Llama`'s own path: full prompt text in, its prefix-match reuse, one greedy token out (seconds)."""
    t0 = now()
    llm.create_completion(prompt, max_tokens=1, temperature=0.0)
    return now() - t0


def open_llama(model_path: str, config: Config, threads: int | None = None) -> Any:
    """llama-cpp-python's `Llama` with llamanode's settings: window, batch sizes, threads, flash attention.

    threads: config.threads when None; 0 leaves Llama its own default.
    """
    from llama_cpp import Llama

    n_threads = config.threads if threads is None else threads
    return Llama(
        model_path=model_path,
        n_ctx=config.num_ctx,
        n_batch=config.num_batch,
        n_ubatch=config.num_ubatch,
        n_threads=n_threads or None,
        n_threads_batch=n_threads or None,
        flash_attn=config.flash_attn,
        verbose=False,
    )


@dataclass
class RunResults:
    """The part every benchmark's results share: its plan and the machine (load average at start and end)."""

    plan: dict[str, Any]
    machine: dict[str, Any]

    def finish(self) -> None:
        self.machine["loadavg_end"] = list(os.getloadavg())


# -- machine and output ----------------------------------------------------------------------


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (nproc, CPU, load) and with which versions."""
    try:
        import llama_cpp

        llama_version = str(llama_cpp.__version__)
    except ImportError:
        llama_version = ""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _lscpu_model(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "llama_cpp_python": llama_version,
        "git_commit": _git_commit(),
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "n/a"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot() -> Any | None:
    """matplotlib.pyplot drawing to files (Agg), or None and a note when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
