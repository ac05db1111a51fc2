"""bench/trace_bound.py: the cost model's fit and the search over segment orders, on traces written here
(one byte is one token, so every count can be worked out by hand)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.git_trace import Trace, TraceOptions, TraceTurn
from bench.trace_bound import CostModel, best_orders, fit_cost_model, given_total, report, token_turns

REPO = Path(__file__).resolve().parents[1]
MODEL = CostModel(per_turn_s=0.01, per_token_s=0.002, per_depth_s=1e-6)


def byte_tokens(text: str) -> list[int]:
    return list(text.encode())


def turn(files: dict[str, str], suffix: str = "diff\n") -> TraceTurn:
    return TraceTurn("c", "s", (("system", "sys\n"), *files.items()), ("system",), suffix)


def make_trace(*turns: TraceTurn) -> Trace:
    return Trace("repo", "head", TraceOptions(), turns)


BIG, SMALL = "b" * 60 + "\n", "s" * 10 + "\n"
# the small file changes every turn: it belongs last, and the caller put it first
EDITS = make_trace(*(turn({"small": SMALL + str(i) * 5 + "\n", "big": BIG, "mid": "m" * 30 + "\n"}) for i in range(4)))


def brute_force(trace: Trace, model: CostModel, think_s: float = 0.0) -> float:
    """Every sequence of per-turn orders, costed directly: what the search must equal."""
    turns = trace.turns
    choices = [[("system", *p) for p in itertools.permutations([n for n, _ in t.segments][1:])] for t in turns]
    best = float("inf")
    for orders in itertools.product(*choices):
        total, previous = 0.0, None
        for t, order in zip(turns, orders, strict=True):
            texts = dict(t.segments)
            seq = [x for name in order for x in byte_tokens(texts[name])]
            kept = 0
            if previous is not None:
                while kept < min(len(seq), len(previous)) and seq[kept] == previous[kept]:
                    kept += 1
            end, suffix = len(seq), len(byte_tokens(t.suffix))
            prefix = model.prefill_s(kept, end)
            if previous is not None and think_s:
                prefix = max(prefix - think_s, 0.0)
            total += model.per_turn_s + prefix + model.prefill_s(end, end + suffix)
            previous = seq
        best = min(best, total)
    return best


@pytest.mark.parametrize("think_s", [0.0, 0.05])
def test_the_search_finds_the_brute_force_optimum(think_s: float) -> None:
    found = best_orders(token_turns(EDITS, byte_tokens), MODEL, think_s=think_s)
    assert found.total_s == pytest.approx(brute_force(EDITS, MODEL, think_s))
    assert found.orders[-1][-1] == "small"  # the file edited every turn ends up last


def test_bounds_order_as_they_must() -> None:
    turns = token_turns(EDITS, byte_tokens)
    given = given_total(turns, MODEL)
    free = best_orders(turns, MODEL).total_s
    first_given = best_orders(turns, MODEL, first_as_given=True)
    prewarmed = best_orders(turns, MODEL, think_s=0.05).total_s
    assert first_given.orders[0] == ("system", "small", "big", "mid")
    assert prewarmed < free < first_given.total_s < given  # turn 0 as given costs one turn's recompute


def test_an_edit_inside_a_segment_keeps_the_tokens_before_it() -> None:
    a = turn({"f": "x" * 40 + "\n"})
    b = turn({"f": "x" * 30 + "y" * 10 + "\n"})
    model = CostModel(0.0, 1.0, 0.0)  # one second per token prefilled
    prefix = len("sys\n") + 41
    assert given_total(token_turns(make_trace(a, b), byte_tokens), model) == pytest.approx(
        prefix + 5 + (prefix - 34) + 5
    )


def test_a_token_spanning_two_segments_is_refused() -> None:
    def merging(text: str) -> list[int]:  # "\nf" is one token: segments joined differ from segments apart
        return byte_tokens(text.replace("\nf", "\x00"))

    with pytest.raises(ValueError, match="spans two segments"):
        token_turns(make_trace(turn({"f": "file\n"})), merging)


def test_the_fit_recovers_the_model_and_is_never_negative() -> None:
    spans = [(0, 900), (300, 1200), (0, 400), (800, 1000), (100, 2000), (1500, 1600)]
    exact = [(lo, hi, MODEL.turn_s(lo, hi)) for lo, hi in spans]
    fitted = fit_cost_model(exact)
    assert fitted.per_token_s == pytest.approx(MODEL.per_token_s, rel=1e-6)
    assert fitted.per_depth_s == pytest.approx(MODEL.per_depth_s, rel=1e-6)
    assert fitted.per_turn_s == pytest.approx(MODEL.per_turn_s, rel=1e-6)
    # less time than tokens would predict on every turn: an unconstrained intercept would go negative
    skewed = [(lo, hi, MODEL.prefill_s(lo, hi) - 0.2) for lo, hi in spans]
    assert min(vars(fit_cost_model(skewed)).values()) >= 0.0
    with pytest.raises(ValueError, match="at least 3"):
        fit_cost_model(exact[:2])


def test_report_checks_the_model_against_what_was_measured() -> None:
    turns = []
    for strategy, reused in (("llama", [0, 0, 0, 0]), ("assembler", [0, 20, 20, 20]), ("prewarm", [0, 0, 0, 0])):
        for i, kept in enumerate(reused):
            turns.append(
                {"strategy": strategy, "turn": i, "reused_tokens": kept, "prefix_tokens": 80 + i, "suffix_tokens": 5}
            )
    for t in turns:
        t["ttft_s"] = MODEL.turn_s(t["reused_tokens"], t["prefix_tokens"] + t["suffix_tokens"])
    totals = {s: {"ttft_s": sum(t["ttft_s"] for t in turns if t["strategy"] == s)} for s in ("llama", "assembler")}
    out = report({"turns": turns, "totals": totals}, EDITS, byte_tokens, 0.05, [("again", EDITS)])
    assert set(out["measured"]) == {"llama", "assembler"}  # the prewarm's turns are not fitted or checked
    for row in out["measured"].values():
        assert row["modelled_s"] == pytest.approx(row["measured_s"], rel=1e-6)
    assert len(out["bounds"]) == 4 and len(out["other_traces"]["again"]) == 4
    json.dumps(out)


def test_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.trace_bound", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "--results" in proc.stdout and "--also" in proc.stdout
