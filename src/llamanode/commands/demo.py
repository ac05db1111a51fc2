"""`llamanode demo`: the coding loop on the embedded model, over llamanode's own source tree.

Turn 1 is cold; turns 2-3 keep the prefix and send new suffixes (test output, a question);
turns 4-6 edit the same file in the middle of the prefix. A ContextAssembler orders the segments:
one edit moves nothing (only the tail after the edit is prefilled), the second moves the file last,
and the third then prefills only that file's changed part.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..assembler import AssemblyReport, ContextAssembler
from ..config import DecodeConfig
from ..kvsession import KVSession
from ..registry import open_session
from ..session import PrefillProgress
from .common import add_model_options, config_from_args

SYSTEM = (
    "<|im_start|>system\nYou are a careful coding assistant. You answer questions about the repository "
    "below in one or two short sentences.<|im_end|>\n<|im_start|>user\n"
)
DEFAULT_FILES = ("errors.py", "config.py", "textstream.py")
TURNS = (
    ("question", "What does ContextOverflowError report?"),
    ("test output", "pytest says: FAILED test_config.py::test_bad_batch - ConfigError: num_batch must be >= 2. Why?"),
    ("question", "Which class keeps stop strings from being emitted?"),
)
EDIT_FILE = "config.py"
EDITS = tuple(f"max_tokens: int | None = {n}" for n in (256, 128, 512, 384))  # the same length: the map stays


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--src", type=Path, default=None, help="source tree to load (default: llamanode's own)")
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), help="files that form the prefix")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens to generate per turn (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    tree = args.src or Path(__file__).resolve().parent.parent
    files = {name: (tree / name).read_text(encoding="utf-8") for name in args.files}
    decode = DecodeConfig(max_tokens=args.max_tokens, stop=("<|im_end|>", "\n\n"), repeat_penalty=1.2)
    print(f"llamanode demo: {len(files)} files of {tree} as the stable prefix", flush=True)
    assembler = ContextAssembler()
    with open_session(args.model, config_from_args(args)) as session:
        print(f"model: {session.identity.description}; num_ctx {session.num_ctx}\n", flush=True)
        for turn, (kind, text) in enumerate(TURNS, start=1):
            label = f"cold start, {kind}" if turn == 1 else f"warm, new {kind}"
            _turn(session, assembler, turn, label, files, text, decode)
        for n, (kind, text) in enumerate(TURNS, start=1):
            edited = {**files, EDIT_FILE: files[EDIT_FILE].replace(EDITS[0], EDITS[n], 1)}
            label = f"edit {n} of {EDIT_FILE} mid-prefix, {kind}"
            _turn(session, assembler, len(TURNS) + n, label, edited, text, decode)
    return 0


def _segments(files: dict[str, str]) -> tuple[tuple[str, str], ...]:
    repo_map = "Repository map:\n" + "".join(f"- {name} ({len(text)} bytes)\n" for name, text in files.items())
    bodies = tuple((name, f"\n### {name}\n{text}") for name, text in files.items())
    return (("system", SYSTEM), ("repo map", repo_map), *bodies)


def _progress(update: PrefillProgress) -> None:
    if update.total_tokens < 512:
        return
    width = 30
    filled = width * update.done_tokens // update.total_tokens
    rate = update.done_tokens / max(update.elapsed_s, 1e-9)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r  prefill [{bar}] {update.done_tokens}/{update.total_tokens} tokens, {rate:.0f} tok/s")
    if update.done_tokens == update.total_tokens:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _turn(
    session: KVSession,
    assembler: ContextAssembler,
    turn: int,
    label: str,
    files: dict[str, str],
    question: str,
    decode: DecodeConfig,
) -> None:
    print(f"-- turn {turn}: {label}", flush=True)
    started = time.perf_counter()
    assembly = assembler.assemble(_segments(files), pinned=["system"])
    prefix = session.ensure_prefix(session.prefix(assembly.segments), on_progress=_progress)
    suffix = session.prefill_suffix(session.suffix(f"\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n"))
    first: float | None = None
    answer = []
    report = None
    for chunk in session.decode(decode):
        if first is None:
            first = time.perf_counter() - started
        answer.append(chunk.text)
        report = chunk.report or report
    ttft = first if first is not None else time.perf_counter() - started
    print(f"   Q: {question}")
    print(f"   A: {''.join(answer).strip()}")
    print(
        f"   time to first token {ttft * 1000:.0f} ms | reused {prefix.reused_tokens} + prefilled "
        f"{prefix.prefilled_tokens} prefix tokens, {suffix.suffix_tokens} suffix tokens | "
        f"decode {report.tokens_per_s if report else 0:.1f} tok/s"
    )
    _explain(session)
    _explain_order(assembly.report)


def _explain(session: KVSession) -> None:
    report = session.explain_context()
    why = report.last_divergence
    cause = "prefix unchanged (byte-hash hit, no tokenization)" if why is None else f"{why.cause}: {why.detail}"
    where = f" in segment {why.segment!r} at token {why.token_index}" if why and why.segment else ""
    print(f"   explain_context: {report.resident_tokens}/{report.num_ctx} tokens resident; {cause}{where}")
    states: Sequence[str] = [f"{s.name}={s.state}" for s in report.segments]
    print(f"   segments: {', '.join(states)}", flush=True)


def _explain_order(report: AssemblyReport) -> None:
    """What the assembler made of this turn's changes (nothing to say on the first turn)."""
    why = {m.name: f"{m.reason}: {m.detail}" for m in report.moves}
    for s in report.segments:
        if s.changed and s.name not in why:
            kept = f"changed (score {s.score:.2f}, no clear evidence yet): order kept"
            why[s.name] = "changed; already last" if s.volatile else kept
    if report.turn > 1 and why:
        print(f"   assembler: {'; '.join(f'{name} {text}' for name, text in why.items())}", flush=True)
    print(flush=True)
