"""What any exact segment order could reach on a replayed trace (issue 12's exact targets), from a bench.trace run.

    .venv/bin/python -m bench.trace --trace T.json --strategies llama,assembler --json bench/out/run.json
    .venv/bin/python -m bench.trace_bound --results bench/out/run.json --json bench/out/run-bound.json

Fits this machine's prefill time per turn from the run's own measured turns (exact strategies that
prefill in the request): ttft = per_turn + per_token * n + per_depth * (sum of the n positions), since
each token's attention grows with its depth. Then, with every turn's segment order free (dynamic
programming over the permutations of the movable segments, knowing every future edit), it finds the least
total TTFT exact reuse could have under that model: a floor for the assembler, whatever its policy. A second bound
keeps turn 0 in the caller's order (a policy has seen nothing before it); both again with the think time's
prewarm before every later turn (each turn's prefix prefill shortened by up to --think seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import llamanode
from llamanode.prefix import common_prefix_len

from .common import log, md_table, ratio, write_json
from .git_trace import Trace, TraceTurn, load_trace
from .trace import tokens, vocab

FIT_FROM = ("llama", "exact", "assembler")  # exact strategies whose whole prefill happens inside the request
MAX_MOVABLE = 6  # 720 orders per turn; more would make the search too slow to be worth it

Tokens = Callable[[str], list[int]]
Order = tuple[str, ...]


@dataclass(frozen=True)
class CostModel:
    """Seconds to first token for a turn that prefills positions [lo, hi)."""

    per_turn_s: float
    per_token_s: float
    per_depth_s: float

    def prefill_s(self, lo: int, hi: int) -> float:
        n = max(hi - lo, 0)
        return self.per_token_s * n + self.per_depth_s * (lo + hi - 1) * n / 2

    def turn_s(self, lo: int, hi: int) -> float:
        return self.per_turn_s + self.prefill_s(lo, hi)


def fit_cost_model(observed: Sequence[tuple[int, int, float]]) -> CostModel:
    """Least squares over (first prefilled position, end position, measured TTFT) triples, no term negative.

    Non-negative least squares by trying every subset of the three terms (a negative per-turn time or
    per-token cost would make the bounds meaningless); numpy has no NNLS and three terms are 7 subsets.
    """
    if len(observed) < 3:
        raise ValueError(f"need at least 3 measured turns to fit 3 parameters, got {len(observed)}")
    x = np.array([[1.0, hi - lo, (lo + hi - 1) * (hi - lo) / 2] for lo, hi, _ in observed])
    y = np.array([t for _, _, t in observed])
    best: tuple[float, list[float]] | None = None
    for size in (1, 2, 3):
        for terms in itertools.combinations(range(3), size):
            solution, *_ = np.linalg.lstsq(x[:, terms], y, rcond=None)
            if (solution < 0).any():
                continue
            coef = [0.0, 0.0, 0.0]
            for term, value in zip(terms, solution, strict=True):
                coef[term] = float(value)
            residual = float(((x @ np.array(coef) - y) ** 2).sum())
            if best is None or residual < best[0]:
                best = (residual, coef)
    if best is None:
        raise ValueError("no non-negative fit: the measured turns do not grow with the tokens prefilled")
    return CostModel(*best[1])


def observed_turns(
    turns: Iterable[dict[str, Any]], strategies: Sequence[str] = FIT_FROM
) -> list[tuple[int, int, float]]:
    """(reused, prefix + suffix, TTFT) of the results' turns run by the given strategies."""
    return [
        (t["reused_tokens"], t["prefix_tokens"] + t["suffix_tokens"], t["ttft_s"])
        for t in turns
        if t["strategy"] in strategies
    ]


class TokenTurn:
    """One turn's token view: its segments tokenized one by one, so any order's tokens are their concatenation.

    Session.prefix tokenizes the joined text; the constructor checks the two agree in the caller's order
    (trace segments end at line breaks, where no token spans two segments).
    """

    def __init__(self, turn: TraceTurn, tokens: Tokens) -> None:
        self.texts = dict(turn.segments)
        self.toks = {name: tokens(text) for name, text in turn.segments}
        self.head = tuple(n for n, _ in turn.segments if n in turn.pinned)
        self.movable = tuple(n for n, _ in turn.segments if n not in turn.pinned)
        self.given = self.head + self.movable
        self.suffix = len(tokens(turn.suffix))
        self.length = sum(len(t) for t in self.toks.values())
        if len(self.movable) > MAX_MOVABLE:
            raise ValueError(f"turn {turn.commit}: {len(self.movable)} movable segments > {MAX_MOVABLE}")
        if tokens(turn.prefix_text) != self.sequence(self.given):
            raise ValueError(f"turn {turn.commit}: a token spans two segments; the search would miscount reuse")

    def orders(self) -> list[Order]:
        return [self.head + p for p in itertools.permutations(self.movable)]

    def sequence(self, order: Order) -> list[int]:
        return [x for name in order for x in self.toks[name]]


def token_turns(trace: Trace, tokens: Tokens) -> list[TokenTurn]:
    """Every turn of the trace tokenized once, for all the searches over it."""
    return [TokenTurn(t, tokens) for t in trace.turns]


def _kept(before: TokenTurn, old: Order, now: TokenTurn, new: Order) -> int:
    """Tokens of the new order's sequence whose KV the old order's leaves reusable (longest common prefix)."""
    kept = 0
    for a, b in zip(old, new, strict=False):
        if a != b or before.texts[a] != now.texts[b]:
            return kept + common_prefix_len(before.toks[a], now.toks[b])
        kept += len(now.toks[b])
    return kept


@dataclass(frozen=True)
class Bound:
    """The least modelled total TTFT over per-turn orders, and the orders that reach it."""

    total_s: float
    orders: tuple[Order, ...]


def best_orders(
    turns: Sequence[TokenTurn], model: CostModel, *, first_as_given: bool = False, think_s: float = 0.0
) -> Bound:
    """Dynamic programming over every turn's orders; a turn's cost depends only on its order and the last one's.

    think_s > 0 models a prewarm before every turn after the first: it prefills the prefix for up to
    think_s seconds, so the turn pays only the rest of the prefix, then the suffix.
    """
    first = turns[0]
    starts = [first.given] if first_as_given else first.orders()
    best: dict[Order, tuple[float, tuple[Order, ...]]] = {
        o: (model.turn_s(0, first.length + first.suffix), (o,)) for o in starts
    }
    for before, now in itertools.pairwise(turns):
        step: dict[Order, tuple[float, tuple[Order, ...]]] = {}
        for order in now.orders():
            end = now.length
            options = []
            for old, (total, path) in best.items():
                kept = _kept(before, old, now, order)
                prefix = max(model.prefill_s(kept, end) - think_s, 0.0)
                options.append((total + model.per_turn_s + prefix + model.prefill_s(end, end + now.suffix), path))
            total, path = min(options, key=lambda option: option[0])
            step[order] = (total, (*path, order))
        best = step
    total, path = min(best.values(), key=lambda option: option[0])
    return Bound(total, path)


def given_total(turns: Sequence[TokenTurn], model: CostModel) -> float:
    """The modelled total in the caller's order (what `Llama` gets)."""
    total = model.turn_s(0, turns[0].length + turns[0].suffix)
    for before, now in itertools.pairwise(turns):
        total += model.turn_s(_kept(before, before.given, now, now.given), now.length + now.suffix)
    return total


def modelled_total(turns: Iterable[dict[str, Any]], strategy: str, model: CostModel) -> float:
    """A strategy's total as the model predicts it from the positions it really prefilled."""
    return sum(model.turn_s(lo, hi) for lo, hi, _ in observed_turns(turns, (strategy,)))


def all_bounds(turns: Sequence[TokenTurn], model: CostModel, think_s: float) -> dict[str, Bound]:
    """The four bounds: turn 0's order free or the caller's, without and with the think time's prewarm."""
    return {
        f"{first}{', ' + str(think_s) + ' s prewarm' if think else ''}": best_orders(
            turns, model, first_as_given=as_given, think_s=think_s if think else 0.0
        )
        for think in (False, True)
        for first, as_given in (
            ("any order, every edit known", False),
            ("turn 0 as given, then every edit known", True),
        )
    }


def report(
    results: dict[str, Any], trace: Trace, tokens: Tokens, think_s: float, also: Sequence[tuple[str, Trace]] = ()
) -> dict[str, Any]:
    model = fit_cost_model(observed_turns(results["turns"]))
    turns = token_turns(trace, tokens)
    given = given_total(turns, model)
    measured = {name: row["ttft_s"] for name, row in results["totals"].items()}
    bounds = all_bounds(turns, model, think_s)
    others = {}
    for label, other in also:
        other_turns = token_turns(other, tokens)
        other_given = given_total(other_turns, model)
        rows = all_bounds(other_turns, model, think_s)
        others[label] = {name: ratio(b.total_s, other_given) for name, b in rows.items()}
    return {
        "model": asdict(model),
        "given_modelled_s": given,
        "measured": {
            name: {"measured_s": s, "modelled_s": modelled_total(results["turns"], name, model)}
            for name, s in measured.items()
            if name in FIT_FROM
        },
        "measured_vs_llama": {name: ratio(s, measured.get("llama", float("nan"))) for name, s in measured.items()},
        "bounds": {
            name: {"total_s": b.total_s, "vs_given": ratio(b.total_s, given), "orders": [list(o) for o in b.orders]}
            for name, b in bounds.items()
        },
        "other_traces": others,
    }


def markdown(out: dict[str, Any]) -> str:
    m = out["model"]
    fit = (
        f"Fitted: {m['per_turn_s'] * 1000:.0f} ms per turn + {m['per_token_s'] * 1000:.2f} ms per token "
        f"+ {m['per_depth_s'] * 1e6:.3f} us per token per position of depth.\n\n"
    )
    check = md_table(
        ["strategy", "measured s", "modelled s", "modelled / measured"],
        [
            [n, r["measured_s"], r["modelled_s"], ratio(r["modelled_s"], r["measured_s"])]
            for n, r in out["measured"].items()
        ],
    )
    bounds = md_table(
        ["exact reuse, least total TTFT", "modelled s", "vs caller's order (`Llama`)"],
        [[n, b["total_s"], b["vs_given"]] for n, b in out["bounds"].items()],
    )
    measured = ", ".join(f"{n} {r:.3f}x" for n, r in out["measured_vs_llama"].items())
    text = (
        f"{fit}{check}\n\nCaller's order, modelled: {out['given_modelled_s']:.1f} s. Measured against `Llama`: "
        f"{measured}.\n\n{bounds}\n"
    )
    if out["other_traces"]:
        names = list(next(iter(out["other_traces"].values())))
        rows = [[trace, *(row[n] for n in names)] for trace, row in out["other_traces"].items()]
        text += "\nOther traces, same fitted model (ratios to the caller's order):\n\n" + md_table(
            ["trace", *names], rows
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True, help="a bench.trace --json file (with llama's turns)")
    parser.add_argument("--trace", type=Path, default=None, help="the trace it replayed (default: as it recorded)")
    parser.add_argument("--think", type=float, default=None, help="prewarm seconds per turn (default: the run's)")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="more traces to bound with the same model")
    parser.add_argument("--json", type=Path, default=None, help="write the bounds (and a .md next to it)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    trace_path = args.trace or Path(results["args"]["trace"])
    trace = load_trace(trace_path)
    trace = Trace(trace.repo, trace.head, trace.options, trace.turns[: int(results["args"]["turns"])])
    think = args.think if args.think is not None else float(results["args"]["think"])
    tok = vocab(str(llamanode.default_model_path()))
    log(f"searching every order of {len(trace.turns)} turns of {trace_path}")
    also = [(path.name, load_trace(path)) for path in args.also]
    out = report(results, trace, lambda text: tokens(tok, text), think, also)
    text = markdown(out)
    print(text)
    if args.json:
        write_json(args.json, {"command": " ".join(["python -m bench.trace_bound", *sys.argv[1:]]), **out})
        args.json.with_suffix(".md").write_text(text, encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
