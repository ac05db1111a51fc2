"""Real-history replay (issue 12): review turns built from git commits, replayed through every strategy.

    .venv/bin/python -m bench.trace --turns 12 --json bench/out/trace-replay.json
    .venv/bin/python -m bench.trace --repo ~/src/other-project --turns 12     # any local clone
    .venv/bin/python -m bench.trace --trace bench/out/trace.json               # a saved trace

Per turn and strategy: prefix tokens, reused, recomputed, suffix tokens and time to first token;
totals, and ratios against `Llama` (same prompt text, same model and settings, same run, turns
interleaved). The `oracle` row counts tokens only: per turn, the tokens of the segments that are new or
changed since the turn before, i.e. what exact reuse recomputes if every changed segment sat last.
Between turns every strategy gets the agent's think time (--think); `prewarm` prefills the upcoming
prefix in it, so its `recomputed` counts what the turn itself still prefilled after the think time, and
`prewarmed` what the prewarm had prefilled before the turn joined it. TTFT is measured after the think time.
Approximate strategies also report their quality against exact reuse on the same turn (approx_quality.py):
mean KL over the suffix positions and greedy agreement of 32 generated tokens (teacher-forced and free).
By default every strategy runs that can run here (llama-server ones need bench/build_llama_server.sh), but
`exact-fa` (the noise floor of the quality figures: exact reuse with flash attention, measured the same way).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import llamanode
from llamanode import Config

from .common import log, machine_info, md_table, ratio, write_json
from .git_trace import Trace, add_trace_options, build_trace, load_trace, options_from_args
from .replay import ReplaySetup, TurnResult, replay
from .strategies import NOT_BY_DEFAULT, STRATEGIES, unavailable

BASELINE = "llama"


def vocab(model_path: str) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=model_path, vocab_only=True, verbose=False)


def tokens(tok: Any, text: str) -> list[int]:
    """A text's tokens as the session makes them, without BOS (special tokens parsed)."""
    return list(tok.tokenize(text.encode(), add_bos=False, special=True))


def count(tok: Any, text: str) -> int:
    return len(tokens(tok, text))


def check_fits(trace: Trace, tok: Any, num_ctx: int) -> None:
    """Refuse a trace whose turns do not fit num_ctx before anything is timed."""
    for turn in trace.turns:
        need = count(tok, turn.prefix_text + turn.suffix) + 1
        if need > num_ctx:
            raise SystemExit(f"turn {turn.commit} needs {need} tokens > num_ctx {num_ctx}: lower --max-files-bytes")


def oracle_rows(trace: Trace, tok: Any) -> list[dict[str, int]]:
    """Per turn: prefix tokens, and tokens of the segments new or changed since the turn before."""
    rows: list[dict[str, int]] = []
    before: set[tuple[str, str]] = set()
    for turn in trace.turns:
        fresh = [text for name, text in turn.segments if (name, text) not in before]
        rows.append(
            {"prefix_tokens": count(tok, turn.prefix_text), "recomputed_tokens": sum(count(tok, t) for t in fresh)}
        )
        before = set(turn.segments)
    return rows


def totals(results: Sequence[TurnResult], names: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [r for r in results if r.strategy == name]
        warm = [r for r in mine if r.turn > 0]
        prefix = sum(r.prefix_tokens for r in mine)
        recomputed = sum(r.recomputed_tokens for r in mine)
        out[name] = {
            "turns": len(mine),
            "prefix_tokens": prefix,
            "reused_tokens": sum(r.reused_tokens for r in mine),
            "recomputed_tokens": recomputed,
            "recomputed_share": ratio(recomputed, prefix),
            "suffix_tokens": sum(r.suffix_tokens for r in mine),
            "prewarmed_tokens": sum(r.detail.get("prewarm", {}).get("prefilled_tokens", 0) for r in mine),
            "ttft_s": sum(r.ttft_s for r in mine),
            "warm_ttft_s": sum(r.ttft_s for r in warm),  # every turn after the cold first one
            "warm_recomputed_tokens": sum(r.recomputed_tokens for r in warm),
            **quality_totals(mine),
        }
    base = out.get(BASELINE)
    for row in out.values():
        for key in ("ttft_s", "warm_ttft_s", "recomputed_tokens", "warm_recomputed_tokens"):
            row[f"{key}_vs_{BASELINE}"] = ratio(row[key], base[key]) if base else float("nan")
    return out


QUALITY = ("kl", "agree_forced", "agree_free")


def quality_totals(results: Sequence[TurnResult]) -> dict[str, float]:
    """Means over the turns (and the worst turn) of an approximate strategy's quality figures."""
    rows = [r.detail for r in results if "kl" in r.detail]
    if not rows:
        return {}
    out = {f"mean_{key}": sum(row[key] for row in rows) / len(rows) for key in QUALITY}
    out["max_kl"] = max(row["kl"] for row in rows)
    out["min_agree_forced"] = min(row["agree_forced"] for row in rows)
    return out


def quality_report(results: Sequence[TurnResult], summary: dict[str, dict[str, float]]) -> str:
    rows = [
        [r.turn, r.strategy, r.recomputed_tokens, r.detail.get("approx_reused", 0),
         r.detail.get("approx_recomputed", 0), r.ttft_s * 1000, r.detail["kl"], r.detail["agree_forced"],
         r.detail["agree_free"], ", ".join(r.detail.get("approx_segments", ())) or r.detail.get("approx_note", "")]
        for r in sorted(results, key=lambda r: (r.turn, r.strategy))
        if "kl" in r.detail
    ]  # fmt: skip
    if not rows:
        return ""
    head = ["turn", "strategy", "recomputed", "kept approx.", "of which recomputed", "TTFT ms", "KL",
            "agree (forced)", "agree (free)", "approximated"]  # fmt: skip
    totals = [
        [name, int(t["recomputed_tokens"]), t["ttft_s"], t[f"ttft_s_vs_{BASELINE}"], t["mean_kl"], t["max_kl"],
         t["mean_agree_forced"], t["min_agree_forced"], t["mean_agree_free"]]
        for name, t in summary.items()
        if "mean_kl" in t
    ]  # fmt: skip
    total_head = ["strategy", "recomputed", "TTFT s", f"vs {BASELINE}", "mean KL", "max KL", "mean agree (forced)",
                  "min agree (forced)", "mean agree (free)"]  # fmt: skip
    return (
        "\n### Approximate reuse: quality against exact reuse on the same turn (exact-fa: the noise floor)\n\n"
        f"{md_table(head, rows)}\n\n"
        f"{md_table(total_head, totals)}\n"
    )


def report(
    trace: Trace, results: Sequence[TurnResult], summary: dict[str, dict[str, float]], oracle: list[dict[str, int]]
) -> str:
    columns = ["turn", "commit", "strategy", "prefix", "reused", "recomputed", "prewarmed", "suffix", "TTFT ms"]
    turns = md_table(
        [*columns, "first token"],
        [
            [
                r.turn,
                r.commit,
                r.strategy,
                r.prefix_tokens,
                r.reused_tokens,
                r.recomputed_tokens,
                r.detail.get("prewarm", {}).get("prefilled_tokens", ""),
                r.suffix_tokens,
                r.ttft_s * 1000,
                repr(r.first_token),
            ]
            for r in sorted(results, key=lambda r: (r.turn, r.strategy))
        ],
    )
    rows = [
        [
            name,
            int(t["prefix_tokens"]),
            int(t["reused_tokens"]),
            int(t["recomputed_tokens"]),
            t["recomputed_share"],
            int(t["prewarmed_tokens"]),
            t["ttft_s"],
            t[f"ttft_s_vs_{BASELINE}"],
            t["warm_ttft_s"],
            t[f"warm_ttft_s_vs_{BASELINE}"],
        ]
        for name, t in summary.items()
    ]
    prefix = sum(o["prefix_tokens"] for o in oracle)
    recomputed = sum(o["recomputed_tokens"] for o in oracle)
    rows.append(
        ["oracle (tokens only)", prefix, prefix - recomputed, recomputed, ratio(recomputed, prefix)] + ["n/a"] * 5
    )
    head = ["strategy", "prefix tok", "reused", "recomputed", "share", "prewarmed", "TTFT s", f"vs {BASELINE}"]
    head += ["warm TTFT s", "vs"]
    return (
        f"### Trace: {len(trace.turns)} turns of {trace.repo} at {trace.head[:12]}\n\n{turns}\n\n"
        f"### Totals (warm: turns after the first)\n\n{md_table(head, rows)}\n" + quality_report(results, summary)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_trace_options(parser)
    parser.add_argument("--trace", type=Path, default=None, help="replay a saved trace (its first --turns turns)")
    parser.add_argument("--save-trace", type=Path, default=None, help="also write the trace that was replayed")
    parser.add_argument(
        "--strategies", default="", help=f"comma-separated, from {', '.join(STRATEGIES)} (default: all that can run)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for every system (%(default)s)"
    )
    parser.add_argument("--num-ctx", type=int, default=8192, help="context size for every system (%(default)s)")
    parser.add_argument("--think", type=float, default=5.0, help="agent think time between turns, s (%(default)s)")
    parser.add_argument("--approx-share", type=float, default=0.1, help="approx-*: recomputed share (%(default)s)")
    parser.add_argument("--approx-min-run", type=int, default=32, help="approx-*: shortest kept run (%(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write results (and a .md next to it)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    if not names:
        names = [n for n in STRATEGIES if unavailable(n) is None and n not in NOT_BY_DEFAULT]
        for n in STRATEGIES:
            if unavailable(n) is not None:
                log(f"skipping {n}: {unavailable(n)}")
    missing = {n: unavailable(n) for n in names if unavailable(n) is not None}
    if missing:
        parser.error(f"cannot run {missing}")
    trace = load_trace(args.trace) if args.trace else build_trace(args.repo, options_from_args(args))
    trace = Trace(trace.repo, trace.head, trace.options, trace.turns[: args.turns])
    if args.save_trace:
        write_json(args.save_trace, trace.to_json())
    config = Config(num_ctx=args.num_ctx, num_threads=args.threads)
    setup = ReplaySetup(str(llamanode.default_model_path()), config, args.approx_share, args.approx_min_run)
    tok = vocab(setup.model_path)
    check_fits(trace, tok, args.num_ctx)
    oracle = oracle_rows(trace, tok)
    log(f"replaying {len(trace.turns)} turns of {trace.repo} through {', '.join(names)}")

    def show(r: TurnResult) -> None:
        log(
            f"turn {r.turn} {r.strategy:>10}: reused {r.reused_tokens}/{r.prefix_tokens}, TTFT {r.ttft_s * 1000:.0f} ms"
        )

    try:
        results = replay(trace, [STRATEGIES[n](setup) for n in names], args.think, show)
    finally:
        setup.close()
    summary = totals(results, names)
    text = report(trace, results, summary, oracle)
    print(text)
    if args.json:
        write_json(
            args.json,
            {
                "command": " ".join(["python -m bench.trace", *sys.argv[1:]]),
                "machine": machine_info(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "trace": {
                    "repo": trace.repo,
                    "head": trace.head,
                    "options": asdict(trace.options),
                    "turns": [{"commit": t.commit, "subject": t.subject, "notes": list(t.notes)} for t in trace.turns],
                },
                "oracle": oracle,
                "totals": summary,
                "turns": [asdict(r) for r in results],
            },
        )
        args.json.with_suffix(".md").write_text(text, encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
