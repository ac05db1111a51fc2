"""The replayable git-history trace (bench/git_trace.py) on a scratch repository, and a smoke run of its replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.git_trace import SYSTEM, TraceOptions, build_trace, load_trace

REPO = Path(__file__).resolve().parents[1]

UTIL = "def helper():\n    return {}\n\n\nclass Box:\n    pass\n"
FIRST = {
    "app.py": "def main():\n    return helper()\n",
    "util.py": UTIL.format(1),
    "big.py": "# padding\n" * 200,
    "README.md": "hello\n",
}
HISTORY = [
    ("util: helper returns 2", {"util.py": UTIL.format(2)}),
    ("docs only", {"README.md": "hello again\n"}),
    ("app: print", {"app.py": "def main():\n    print(helper())\n", "new.py": "def fresh():\n    pass\n"}),
    ("big: grow", {"big.py": "# padding\n" * 201, "util.py": UTIL.format(3)}),
]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for path, text in files.items():
        (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    repo = tmp_path_factory.mktemp("history")
    git(repo, "init", "-q")
    commits = [commit(repo, FIRST, "start")]
    commits += [commit(repo, files, message) for message, files in HISTORY]
    return repo, commits


def test_turns_are_the_commits_that_touch_python_oldest_first(scratch: tuple[Path, list[str]]) -> None:
    repo, commits = scratch
    trace = build_trace(repo, TraceOptions(turns=10, files=2, max_files_bytes=1000))
    # the root commit has nothing before it; the docs-only commit touches no Python
    assert [t.commit for t in trace.turns] == [commits[1][:12], commits[3][:12], commits[4][:12]]
    assert [t.subject for t in trace.turns] == ["util: helper returns 2", "app: print", "big: grow"]
    assert trace.head == commits[-1]
    assert all(t.pinned == ("system",) and t.segments[0] == ("system", SYSTEM) for t in trace.turns)
    assert trace.turns[0].segments[1][0] == "repo map"


def test_files_stand_as_before_the_commit_and_the_diff_is_the_suffix(scratch: tuple[Path, list[str]]) -> None:
    repo, _ = scratch
    first = build_trace(repo, TraceOptions(turns=3, files=2, max_files_bytes=1000)).turns[0]
    segments = dict(first.segments)
    assert "    return 1\n" in segments["file util.py"] and "return 2" not in segments["file util.py"]
    assert "-    return 1\n+    return 2\n" in first.suffix
    assert first.suffix.startswith("\nReview this commit: util: helper returns 2\n```diff\n")
    assert first.suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert first.prefix_text == "".join(text for _, text in first.segments)


def test_relevance_budget_and_notes(scratch: tuple[Path, list[str]]) -> None:
    repo, _ = scratch
    turns = build_trace(repo, TraceOptions(turns=3, files=2, max_files_bytes=1000, max_diff_bytes=200)).turns
    # the commit's own files first (new.py did not exist before it), then the most recently changed one
    assert [n for n, _ in turns[1].segments[2:]] == ["file app.py", "file util.py"]
    # big.py changed most but does not fit the budget; the note says so, and the diff was cut
    last = turns[2]
    assert [n for n, _ in last.segments[2:]] == ["file app.py", "file util.py"]
    assert any(note.startswith("skipped big.py (2000 bytes") for note in last.notes)
    assert any(note.startswith("diff cut from") for note in last.notes) and "[... diff cut]" in last.suffix


def test_a_working_set_keeps_the_most_often_changed_files_every_turn(scratch: tuple[Path, list[str]]) -> None:
    repo, _ = scratch
    turns = build_trace(repo, TraceOptions(turns=3, files=2, max_files_bytes=1000, working_set=True)).turns
    # util.py changes twice in the window, app.py once with the most lines: the same two files every turn
    assert [[n for n, _ in t.segments[2:]] for t in turns] == [["file app.py", "file util.py"]] * 3
    assert "return 1" in dict(turns[0].segments)["file util.py"]  # as they stood before each commit
    assert "return 2" in dict(turns[2].segments)["file util.py"]
    assert "print(helper())" in dict(turns[2].segments)["file app.py"]


def test_repo_map_lists_paths_and_top_level_symbols(scratch: tuple[Path, list[str]]) -> None:
    repo, _ = scratch
    turn = build_trace(repo, TraceOptions(turns=1)).turns[0]
    repo_map = dict(turn.segments)["repo map"]
    assert repo_map == "Repository map:\n- app.py: main\n- big.py\n- new.py: fresh\n- util.py: helper, Box\n"
    cut = dict(build_trace(repo, TraceOptions(turns=1, max_map_bytes=50)).turns[0].segments)["repo map"]
    assert cut == "Repository map:\n- app.py: main\n- big.py\n- ... 2 more files\n"


def test_same_history_same_trace_and_it_round_trips(scratch: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, commits = scratch
    options = TraceOptions(rev=commits[-1], turns=3, files=2, max_files_bytes=1000)
    trace = build_trace(repo, options)
    assert build_trace(repo, options) == trace
    saved = tmp_path / "trace.json"
    saved.write_text(json.dumps(trace.to_json()))
    assert load_trace(saved) == trace
    older = build_trace(repo, TraceOptions(rev=commits[3], turns=3, files=2, max_files_bytes=1000))
    assert [t.commit for t in older.turns] == [commits[1][:12], commits[3][:12]]


def test_a_bad_revision_is_a_clear_error(scratch: tuple[Path, list[str]]) -> None:
    repo, _ = scratch
    with pytest.raises(RuntimeError, match="git rev-parse no-such-rev"):
        build_trace(repo, TraceOptions(rev="no-such-rev"))


@pytest.mark.slow
def test_replay_smoke(scratch: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = scratch
    out = tmp_path / "replay.json"
    command = [sys.executable, "-m", "bench.trace", "--repo", str(repo), "--turns", "2"]
    command += ["--threads", "1", "--num-ctx", "2048", "--json", str(out)]
    names = ["llama", "exact", "assembler", "prewarm", "assembler+prewarm", "approx-boundary", "approx-tail"]
    names += ["approx+prewarm"]
    command += ["--strategies", ",".join(names), "--approx-min-run", "8"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(results["totals"]) == set(names)
    assert len(results["turns"]) == 2 * len(names) and len(results["oracle"]) == 2
    for name in ("approx-boundary", "approx-tail"):
        cold, warm = (next(r for r in results["turns"] if (r["strategy"], r["turn"]) == (name, i)) for i in (0, 1))
        assert (cold["detail"]["kl"], cold["detail"]["agree_forced"]) == (0.0, 1.0)  # a cold turn is exact
        assert warm["detail"]["kl"] >= 0 and 0 <= warm["detail"]["agree_forced"] <= 1
        assert results["totals"][name]["mean_agree_free"] <= 1
    assert "### Approximate reuse" in proc.stdout
    for row in results["turns"]:
        assert row["reused_tokens"] + row["recomputed_tokens"] == row["prefix_tokens"]
    by = {(r["strategy"], r["turn"]): r for r in results["turns"]}
    assert by["exact", 1]["prefix_tokens"] == by["llama", 1]["prefix_tokens"]
    assert results["totals"]["llama"]["ttft_s_vs_llama"] == 1.0
    # the second turn's prefix was prewarmed during the think time (5 s): the turn joined or found it done
    prewarm = by["prewarm", 1]["detail"]["prewarm"]
    assert prewarm["outcome"] in ("joined", "completed")
    assert prewarm["prefilled_tokens"] + by["prewarm", 1]["recomputed_tokens"] == by["exact", 1]["recomputed_tokens"]
    both = by["assembler+prewarm", 1]["detail"]  # the assembler's order, prewarmed
    assert both["order"] == by["assembler", 1]["detail"]["order"]
    assert both["prewarm"]["outcome"] in ("joined", "completed")
    approx_warmed = by["approx+prewarm", 1]["detail"]
    assert approx_warmed["prewarm"]["outcome"] in ("joined", "completed") and approx_warmed["kl"] >= 0
    assert "### Totals" in proc.stdout
