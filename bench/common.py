"""Shared benchmark helpers: timing and statistics, interleaving, prompts, machine facts, tables.

Used by bench_core.py and by the pool and server benchmarks. The machine these run on is
shared and noisy, so every comparison runs its cases interleaved in one process
(A, B, C, then C, B, A, ...) and reports medians and ratios, never a lone absolute time.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "LLAMA_SERVER",
    "OUT_DIR",
    "REPO",
    "SYSTEM_INTRO",
    "Server",
    "Stats",
    "Tokenize",
    "chatml_prefix",
    "chatml_suffix",
    "file_segments",
    "fit_text",
    "free_port",
    "interleaved",
    "llama_server_cmd",
    "llamanode_serve_cmd",
    "log",
    "machine_info",
    "md_table",
    "module_cmd",
    "now",
    "percentile",
    "ratio",
    "source_files",
    "source_text",
    "stats",
    "verdict",
    "write_json",
]

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "llamanode"
OUT_DIR = REPO / "bench" / "out"
LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER", Path.home() / ".cache/llamanode/llama-server/bin/llama-server"))
"""llama.cpp's own server of the vendored revision, built by bench/build_llama_server.sh."""

Tokenize = Callable[[str], list[int]]
"""text -> token ids, special tokens parsed (ChatML markers become control tokens), no BOS added."""

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


# -- prompts -----------------------------------------------------------------------------------

SYSTEM_INTRO = (
    "You are a careful coding assistant working in the llamanode repository: a Python runtime that keeps "
    "a coding agent's prompt-prefix KV cache hot in a local LLM. Answer with short, correct code edits. "
    "The repository's source follows, one file after another.\n\n"
)
OPENERS = (
    "Explain",
    "Refactor",
    "Why does",
    "Summarize",
    "Find the bug in",
    "Rename the variables of",
    "Describe",
    "List the callers of",
    "Check",
    "Document",
    "Which tests cover",
    "Simplify",
    "Review",
    "Optimize",
    "Translate to plain English",
    "Add type hints to",
)
ASSISTANT_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def source_files() -> list[tuple[str, str]]:
    """(relative path, text) of every llamanode source file, in a stable order."""
    files = sorted(SRC.rglob("*.py"))
    return [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in files]


def source_text() -> str:
    """llamanode's own source tree, concatenated with a file marker before each file."""
    return "".join(f"# file: {name}\n{text}\n" for name, text in source_files())


def file_segments(text: str, marker: str = "# file: ") -> list[tuple[str, str]]:
    """Split a prompt into manifest segments at file markers: (name, text) pairs that tile it exactly.

    The part before the first marker is "head"; a repeated file name gets a "#2" suffix.
    """
    segments: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    start = 0
    name = "head"
    at = text.find(marker)
    while at != -1:
        segments.append((name, text[start:at]))
        line_end = text.find("\n", at)
        file_name = text[at + len(marker) : line_end if line_end != -1 else len(text)]
        seen[file_name] = seen.get(file_name, 0) + 1
        name = file_name if seen[file_name] == 1 else f"{file_name}#{seen[file_name]}"
        start = at
        at = text.find(marker, at + 1)
    segments.append((name, text[start:]))
    return [(n, t) for n, t in segments if t]


def fit_text(tokenize: Tokenize, make: Callable[[str], str], body: str, n_tokens: int) -> str:
    """make(body[:cut]) with exactly n_tokens tokens; body is repeated when it is too short.

    If no cut near the boundary gives exactly n_tokens (a long token such as an indentation run
    can jump the count by more than one), the body's start is shifted by a few characters and
    the search repeated.
    """
    if len(tokenize(make(""))) > n_tokens:
        raise ValueError(f"the frame alone is longer than {n_tokens} tokens")
    while len(tokenize(make(body))) < n_tokens:
        body = body + "\n" + body
    for shift in range(0, 400, 13):
        text = _exact_cut(tokenize, make, body[shift:], n_tokens)
        if text is not None:
            return text
    raise ValueError(f"no cut of the body gives exactly {n_tokens} tokens")


def _exact_cut(tokenize: Tokenize, make: Callable[[str], str], body: str, n_tokens: int) -> str | None:
    lo, hi = 0, len(body)
    while lo < hi:  # smallest cut whose text has >= n_tokens tokens
        mid = (lo + hi) // 2
        if len(tokenize(make(body[:mid]))) >= n_tokens:
            hi = mid
        else:
            lo = mid + 1
    for cut in sorted(range(max(0, lo - 64), min(len(body), lo + 64) + 1), key=lambda c: abs(c - lo)):
        text = make(body[:cut])
        if len(tokenize(text)) == n_tokens:
            return text
    return None


def chatml_prefix(tokenize: Tokenize, n_tokens: int, body: str | None = None, intro: str = SYSTEM_INTRO) -> str:
    """A ChatML system turn holding the source tree, then an opened user turn: exactly n_tokens tokens.

    A different intro gives a prefix that shares only `<|im_start|>system\\n` with the default one.
    """
    text = source_text() if body is None else body

    def make(b: str) -> str:
        return f"<|im_start|>system\n{intro}{b}<|im_end|>\n<|im_start|>user\n"

    return fit_text(tokenize, make, text, n_tokens)


def chatml_suffix(tokenize: Tokenize, n_tokens: int, variant: int) -> str:
    """The rest of a user turn ending in `<|im_start|>assistant\\n`: exactly n_tokens tokens.

    Consecutive variants start with different words and quote different code, so a
    prefix-matching cache cannot reuse any of the previous suffix.
    """
    opener = OPENERS[variant % len(OPENERS)]
    src = source_text()
    start = (variant * 1733) % max(1, len(src) - 4096)
    snippet = src[start : start + 8192]

    frames = (f"{opener} this code:\n```python\n{{}}", f"{opener}: {{}}", f"{opener.split()[0]} {{}}")
    for frame in frames:  # short suffixes get a shorter frame

        def make(b: str, frame: str = frame) -> str:
            return frame.format(b) + ASSISTANT_TAIL

        if len(tokenize(make(""))) < n_tokens:
            return fit_text(tokenize, make, snippet, n_tokens)
    raise ValueError(f"a suffix needs more than {n_tokens} tokens")


# -- server processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process on 127.0.0.1: started, polled on ready_path until it answers 200, stopped."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path, timeout: float = 300.0) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{self.name}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                cwd=REPO,  # so that `python -m bench.<name>` finds the package
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def module_cmd(name: str, *args: str) -> list[str]:
    """`python -m bench.<name> args...` with this interpreter; run it with cwd=REPO (Server does)."""
    return [sys.executable, "-m", f"bench.{name}", *args]


def llamanode_serve_cmd(model: Path, port: int, threads: int, ctx: int, store_dir: Path, *extra: str) -> list[str]:
    """`llamanode serve` of this checkout's interpreter, one workspace at a time, quiet."""
    return [sys.executable, "-m", "llamanode.cli", "serve", "--port", str(port), "--model", str(model),
            "--ctx", str(ctx), "--threads", str(threads), "--parallel", "1", "--store-dir", str(store_dir),
            "--quiet", *extra]  # fmt: skip


def llama_server_cmd(
    model: Path, port: int, threads: int, ctx: int, *extra: str, train_ctx: int = 8192, repack: bool = True
) -> list[str]:
    """llama-server with the Jinja templates, flash attention off (llamanode's default), one slot.

    A window beyond the model's training context is reached by YaRN, as llamanode does:
    `--rope-scaling yarn --rope-scale ctx/train_ctx --yarn-orig-ctx train_ctx`.
    """
    cmd = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
           "-t", str(threads), "-tb", str(threads), "-np", "1", "-fa", "off", "--jinja", "--no-webui"]  # fmt: skip
    if ctx > train_ctx:
        cmd += ["--rope-scaling", "yarn", "--rope-scale", f"{ctx / train_ctx:g}", "--yarn-orig-ctx", str(train_ctx)]
    if not repack:
        cmd.append("--no-repack")
    return [*cmd, *extra]


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


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
