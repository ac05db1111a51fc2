"""A replayable coding-agent trace built from a repository's git history (issue 12).

Each turn reviews one commit that touches Python files. Its prefix is named segments: a system
prompt (pinned), a repo map (paths and top-level symbols) and the K most relevant Python files as
they stood before the commit, in path order; its suffix is the commit's Python diff. Relevance: the
files the commit changes (most lines changed first), then the files changed most recently before it.
With --working-set the K files are the same every turn instead: those the window's commits change most
often, as an agent keeps the files it works on open while it edits them (an edit is then mid-prefix).
Nothing is downloaded: the repository is a local clone (default: llamanode's own history).

    .venv/bin/python -m bench.git_trace --turns 12 --out bench/out/trace.json    # build and save a trace
    .venv/bin/python -m bench.trace --trace bench/out/trace.json       # replay it

A file that does not fit the turn's --max-files-bytes is skipped and an oversized diff is cut; each
turn's notes say so. Same repository, revision and options: the same trace, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SYSTEM", "Trace", "TraceOptions", "TraceTurn", "build_trace", "load_trace"]

REPO = Path(__file__).resolve().parents[1]
FORMAT = "llamanode.trace/1"
SYSTEM = (
    "<|im_start|>system\nYou are a careful code reviewer. The repository map and the source files the "
    "change touches follow; then the user shows a commit's diff. Point out bugs and risky changes in a few "
    "short sentences.<|im_end|>\n<|im_start|>user\n"
)
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
PYTHON = ("--", "*.py")  # a pathspec: Python files at any depth
SYMBOL = re.compile(r"^(?:async\s+def|def|class)\s+(\w+)")


@dataclass(frozen=True)
class TraceOptions:
    rev: str = "HEAD"
    turns: int = 12
    files: int = 3  # source files per turn (K)
    max_files_bytes: int = 16000  # the files of one turn together (the prompt must fit num_ctx)
    max_map_bytes: int = 2500
    max_diff_bytes: int = 4000
    lookback: int = 20  # earlier commits whose changed files count as relevant
    working_set: bool = False  # the same K files every turn: the ones the window changes most often


@dataclass(frozen=True)
class TraceTurn:
    """One review turn: named prefix segments (pinned ones lead) and the suffix."""

    commit: str
    subject: str
    segments: tuple[tuple[str, str], ...]
    pinned: tuple[str, ...]
    suffix: str
    notes: tuple[str, ...] = ()

    @property
    def prefix_text(self) -> str:
        return "".join(text for _, text in self.segments)


@dataclass(frozen=True)
class Trace:
    repo: str
    head: str
    options: TraceOptions
    turns: tuple[TraceTurn, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}


def load_trace(path: Path) -> Trace:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} trace")
    turns = tuple(
        TraceTurn(
            commit=t["commit"],
            subject=t["subject"],
            segments=tuple((str(n), str(x)) for n, x in t["segments"]),
            pinned=tuple(t["pinned"]),
            suffix=t["suffix"],
            notes=tuple(t["notes"]),
        )
        for t in data["turns"]
    )
    return Trace(data["repo"], data["head"], TraceOptions(**data["options"]), turns)


class Git:
    """Read-only git plumbing on one local repository."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        proc = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, check=False)
        if proc.returncode not in ok:
            raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode("utf-8", errors="replace")

    def text(self, rev: str, path: str) -> str:
        return self("show", f"{rev}:{path}")


def build_trace(repo: Path, options: TraceOptions) -> Trace:
    """The last `options.turns` commits at `options.rev` that change Python files, oldest first."""
    git = Git(repo)
    head = git("rev-parse", options.rev).strip()
    listed = git("rev-list", "--first-parent", "--no-merges", f"-n{options.turns}", head, *PYTHON).split()
    commits = [(commit, parent) for commit in reversed(listed) if (parent := _parent(git, commit)) is not None]
    working_set = _working_set(git, commits) if options.working_set else None
    turns = tuple(_turn(git, commit, parent, options, working_set) for commit, parent in commits)
    return Trace(str(repo), head, options, turns)


def _parent(git: Git, commit: str) -> str | None:
    """The first parent (None for a root commit: nothing before it to review against)."""
    parents = git("rev-list", "--parents", "-n1", commit).split()[1:]
    return parents[0] if parents else None


def _churn(git: Git, parent: str, commit: str) -> Counter[str]:
    """Lines added and removed per Python file the commit changes."""
    churn: Counter[str] = Counter()
    for line in git("diff", "--numstat", "--no-renames", parent, commit, *PYTHON).splitlines():
        added, removed, path = line.split("\t", 2)
        churn[path] = int(added) + int(removed) if added.isdigit() and removed.isdigit() else 0
    return churn


def _working_set(git: Git, commits: Sequence[tuple[str, str]]) -> list[str]:
    """Every file the window changes, most often changed first (then most lines, then path)."""
    touches: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for commit, parent in commits:
        churn = _churn(git, parent, commit)
        touches.update(churn.keys())
        lines.update(churn)
    return sorted(touches, key=lambda p: (-touches[p], -lines[p], p))


def _turn(git: Git, commit: str, parent: str, options: TraceOptions, working_set: Sequence[str] | None) -> TraceTurn:
    sizes = _python_sizes(git, parent)
    if working_set is None:
        chosen, notes = _relevant_files(git, parent, commit, sizes, options)
    else:
        chosen, notes = _fitting(working_set, sizes, options)
    files = tuple((f"file {path}", _file_segment(path, git.text(parent, path))) for path in sorted(chosen))
    segments = (("system", SYSTEM), ("repo map", _repo_map(git, parent, options.max_map_bytes)), *files)
    diff = git("diff", "--no-color", "--no-renames", parent, commit, *PYTHON)
    if len(diff.encode()) > options.max_diff_bytes:
        notes.append(f"diff cut from {len(diff.encode())} to {options.max_diff_bytes} bytes")
        diff = diff.encode()[: options.max_diff_bytes].decode("utf-8", errors="ignore") + "\n[... diff cut]\n"
    subject = git("log", "-1", "--format=%s", commit).strip()
    suffix = f"\nReview this commit: {subject}\n```diff\n{diff}```{ASSISTANT}"
    return TraceTurn(commit[:12], subject, segments, ("system",), suffix, tuple(notes))


def _python_sizes(git: Git, rev: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for line in git("ls-tree", "-r", "-l", rev).splitlines():  # ls-tree takes no globs
        meta, path = line.split("\t", 1)
        size = meta.split()[3]
        if path.endswith(".py") and size.isdigit():
            sizes[path] = int(size)
    return sizes


def _relevant_files(
    git: Git, parent: str, commit: str, sizes: dict[str, int], options: TraceOptions
) -> tuple[list[str], list[str]]:
    """The commit's changed files (most lines first), then recently changed ones, while they fit the budget."""
    churn = _churn(git, parent, commit)
    log = git("log", "--first-parent", "--format=", "--name-only", f"-n{options.lookback}", parent, *PYTHON)
    recent = [path for path in log.splitlines() if path]  # newest first
    return _fitting(list(dict.fromkeys(sorted(churn, key=lambda p: (-churn[p], p)) + recent)), sizes, options)


def _fitting(ranked: Sequence[str], sizes: dict[str, int], options: TraceOptions) -> tuple[list[str], list[str]]:
    """The first options.files of ranked that exist at this revision and fit the byte budget together."""
    chosen: list[str] = []
    notes: list[str] = []
    room = options.max_files_bytes
    for path in (p for p in ranked if p in sizes):  # not files the commit adds
        if len(chosen) == options.files:
            break
        if sizes[path] > room:
            notes.append(f"skipped {path} ({sizes[path]} bytes; {room} left of {options.max_files_bytes})")
            continue
        chosen.append(path)
        room -= sizes[path]
    return chosen, notes


def _file_segment(path: str, text: str) -> str:
    closed = text if text.endswith("\n") else text + "\n"
    return f"\n### {path}\n```python\n{closed}```\n"


def _repo_map(git: Git, rev: str, max_bytes: int) -> str:
    """Python paths with their top-level symbols, in path order, cut at max_bytes."""
    symbols: dict[str, list[str]] = {path: [] for path in sorted(_python_sizes(git, rev))}
    found_lines = git("grep", "-I", "-E", "--full-name", "-e", r"^(async def|def|class) ", rev, *PYTHON, ok=(0, 1))
    for line in found_lines.splitlines():  # rev:path:code
        path, _, code = line.removeprefix(f"{rev}:").partition(":")
        found = SYMBOL.match(code)
        if found and path in symbols:
            symbols[path].append(found.group(1))
    lines = ["Repository map:\n"]
    size = len(lines[0])
    for i, (path, names) in enumerate(symbols.items()):
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        line = f"- {path}: {shown}\n" if shown else f"- {path}\n"
        if size + len(line) > max_bytes:
            lines.append(f"- ... {len(symbols) - i} more files\n")
            break
        lines.append(line)
        size += len(line)
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build a replayable review trace from a git history (issue 12)")
    add_trace_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="where to write the trace JSON")
    args = parser.parse_args(argv)
    trace = build_trace(args.repo, options_from_args(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(trace.to_json(), indent=1) + "\n", encoding="utf-8")
    for turn in trace.turns:
        size = len(turn.prefix_text.encode()) + len(turn.suffix.encode())
        print(f"{turn.commit} {len(turn.segments)} segments {size} bytes  {turn.subject[:60]}", file=sys.stderr)
    print(args.out)
    return 0


def add_trace_options(parser: argparse.ArgumentParser) -> None:
    d = TraceOptions()
    parser.add_argument("--repo", type=Path, default=REPO, help="a local git clone (default: llamanode's own)")
    parser.add_argument("--rev", default=d.rev, help="the newest commit to consider (default: %(default)s)")
    for flag, default, what in (
        ("--turns", d.turns, "commits"),
        ("--files", d.files, "source files per turn"),
        ("--max-files-bytes", d.max_files_bytes, "one turn's files together"),
        ("--max-map-bytes", d.max_map_bytes, "repo map"),
        ("--max-diff-bytes", d.max_diff_bytes, "diff"),
        ("--lookback", d.lookback, "earlier commits for relevance"),
    ):
        parser.add_argument(flag, type=int, metavar="N", default=default, help=f"{what} (default: %(default)s)")
    parser.add_argument(
        "--working-set",
        action="store_true",
        help="the same files every turn: those the window's commits change most often (edits land mid-prefix)",
    )


def options_from_args(args: argparse.Namespace) -> TraceOptions:
    return TraceOptions(
        rev=args.rev,
        turns=args.turns,
        files=args.files,
        max_files_bytes=args.max_files_bytes,
        max_map_bytes=args.max_map_bytes,
        max_diff_bytes=args.max_diff_bytes,
        lookback=args.lookback,
        working_set=args.working_set,
    )


if __name__ == "__main__":
    raise SystemExit(main())
