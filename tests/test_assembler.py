"""ContextAssembler: learned order, hysteresis, pins, persistence, properties, and warm == cold on the real model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SEGMENTS, SUFFIX, ColdFn, decode_answer
from llamanode import (
    AssemblerPolicy,
    Assembly,
    ConfigError,
    ContextAssembler,
    InvalidInputError,
    KVSession,
)

BASE = {"system": "S", "map": "M0", "a": "A0", "b": "B0", "c": "C0"}
Turn = tuple[dict[str, str], tuple[str, ...]]


def run(history: list[Turn], assembler: ContextAssembler | None = None) -> list[Assembly]:
    asm = assembler or ContextAssembler()
    return [asm.assemble(segments, pinned) for segments, pinned in history]


def edits(name: str, turns: int, start: dict[str, str] = BASE) -> list[dict[str, str]]:
    """`turns` turns of `start` in which `name` changes every turn after the first."""
    return [{**start, name: f"{start[name]}/{t}" if t else start[name]} for t in range(turns)]


def order(assembly: Assembly) -> tuple[str, ...]:
    return assembly.report.order


# -- ordering and hysteresis ----------------------------------------------------------------------


def test_first_turn_keeps_the_callers_order_with_pins_first() -> None:
    asm = ContextAssembler().assemble([("a", "A"), ("system", "S"), ("b", "B")], pinned=["system"])
    assert asm.segments == (("system", "S"), ("a", "A"), ("b", "B"))
    assert [(m.name, m.reason, m.after) for m in asm.report.moves] == [
        ("system", "new", 0),
        ("a", "new", 1),
        ("b", "new", 2),
    ]
    assert asm.report.kept_segments == 0


def test_unchanged_turns_keep_the_order_and_report_nothing() -> None:
    out = run([(BASE, ("system",))] * 4)
    assert {order(a) for a in out} == {("system", "map", "a", "b", "c")}
    assert all(a.report.moves == () and a.report.kept_segments == 5 for a in out[1:])


def test_a_single_edit_does_not_reshuffle() -> None:
    edited: Turn = ({**BASE, "a": "A1"}, ("system",))
    history = [(BASE, ("system",))] * 3 + [edited] * 4
    out = run(history)
    assert {order(a) for a in out} == {("system", "map", "a", "b", "c")}
    edited = out[3].report
    assert edited.moves == () and edited.kept_segments == 2
    assert [s.name for s in edited.segments if s.changed] == ["a"]
    assert edited.segments[2].score == pytest.approx(0.5)


def test_a_segment_edited_every_turn_moves_last_after_evidence_and_stays() -> None:
    out = run([(s, ("system",)) for s in edits("a", 10)])
    assert order(out[1]) == ("system", "map", "a", "b", "c")  # one edit: no evidence yet
    assert order(out[2]) == ("system", "map", "b", "c", "a")  # the second edit in a row moves it
    moved = out[2].report.moves
    assert [(m.name, m.reason, m.before, m.after) for m in moved] == [("a", "volatile", 2, 4)]
    assert "score 0.75 >= 0.60; changes 1.00/turn > body breaks 0.25/turn" in moved[0].detail
    assert {order(a) for a in out[2:]} == {("system", "map", "b", "c", "a")}
    assert all(a.report.moves == () and a.report.kept_segments == 4 for a in out[3:])


def test_a_segment_does_not_move_behind_a_body_that_breaks_more_often() -> None:
    """Files come and go every turn; the map changes twice in a row, but less often than the files break."""
    asm = ContextAssembler()
    reports = []
    maps = ["M0"] * 4 + ["M1", "M2"] + ["M2"] * 3  # edited in two turns in a row: score 0.75
    for t, repo_map in enumerate(maps):
        files = {f"f{t}": "x", f"f{t + 1}": "y"}  # one file leaves, one arrives, one changes each turn
        reports.append(asm.assemble({"system": "S", "map": repo_map, **files}, ["system"]).report)
    assert reports[5].segments[1].score == pytest.approx(0.75) and reports[5].body_break_rate > 0.6
    assert all(r.order[:2] == ("system", "map") for r in reports)
    assert not any(m.reason == "volatile" for r in reports for m in r.moves)
    # the same map edits in a quiet body do move it
    quiet = ContextAssembler()
    for t in range(8):
        last = quiet.assemble({"system": "S", "map": f"M{t}", "f1": "x", "f2": "y"}, ["system"]).report
    assert last.order == ("system", "f1", "f2", "map") and last.body_break_rate < 0.4


def test_pinned_segments_stay_put_however_often_they_change() -> None:
    history = [({**s, "system": f"S{t}"}, ("system", "map")) for t, s in enumerate(edits("b", 8))]
    out = run(history)
    assert all(order(a)[:2] == ("system", "map") for a in out)
    assert order(out[-1]) == ("system", "map", "a", "c", "b")
    assert not any(m.name == "system" and m.reason == "volatile" for a in out for m in a.report.moves)
    assert out[-1].report.segments[0].score > 0.9 and out[-1].report.segments[0].pinned


def test_pins_follow_the_callers_order_and_unpinning_is_reported() -> None:
    asm = ContextAssembler()
    asm.assemble(BASE, ["system"])
    pinned = asm.assemble({"c": "C0", **BASE}, ["c", "system"])
    assert order(pinned)[:2] == ("c", "system")
    assert [(m.name, m.reason) for m in pinned.report.moves] == [("c", "pinned")]
    unpinned = asm.assemble(BASE, ["system"])
    assert [(m.name, m.reason) for m in unpinned.report.moves] == [("c", "unpinned")]
    assert order(unpinned)[0] == "system"


def test_new_segments_go_before_the_volatile_tail_and_removed_ones_drop_out() -> None:
    asm = ContextAssembler()
    for seg in edits("a", 3):
        asm.assemble(seg, ["system"])
    grown = asm.assemble({**BASE, "a": "A/3", "new": "N"}, ["system"])
    assert order(grown) == ("system", "map", "b", "c", "new", "a")
    assert [(m.name, m.reason, m.before, m.after) for m in grown.report.moves] == [("new", "new", None, 4)]
    assert grown.report.kept_segments == 4
    smaller = {k: v for k, v in BASE.items() if k != "b"} | {"a": "A/4", "new": "N"}
    shrunk = asm.assemble(smaller, ["system"])
    assert order(shrunk) == ("system", "map", "c", "new", "a")
    assert [(m.name, m.reason, m.before, m.after) for m in shrunk.report.moves] == [("b", "removed", 2, None)]


def test_a_returning_segment_keeps_its_history_and_group() -> None:
    asm = ContextAssembler()
    for seg in edits("a", 4):
        asm.assemble(seg, ["system"])
    without_a = {k: v for k, v in BASE.items() if k != "a"}
    asm.assemble(without_a, ["system"])
    back = asm.assemble({**without_a, "a": "A/9", "d": "D"}, ["system"])
    assert order(back) == ("system", "map", "b", "c", "d", "a")
    returned = [m for m in back.report.moves if m.name == "a"]
    assert [m.reason for m in returned] == ["returned"] and "end of the volatile tail" in returned[0].detail
    assert back.report.segments[-1].seen == 5 and back.report.segments[-1].changed


def test_a_quiet_tail_segment_waits_until_moving_it_costs_nothing() -> None:
    asm = ContextAssembler()
    history = [BASE] + [{**BASE, "a": f"A{t}"} for t in range(1, 4)]  # a: volatile, last
    history += [{**BASE, "a": f"A{t}", "b": f"B{t}"} for t in range(4, 7)]  # b joins the tail, ahead of a (rarer)
    history += [{**BASE, "a": "A6", "b": "B7"}]  # a goes quiet
    reports = [asm.assemble(seg, ["system"]).report for seg in history]
    assert reports[-1].order == ("system", "map", "c", "b", "a")
    quiet = [asm.assemble({**BASE, "a": "A6", "b": "B7"}, ["system"]).report for _ in range(2)][-1]
    assert quiet.order == ("system", "map", "c", "b", "a") and quiet.kept_segments == 5
    assert quiet.waiting == ("a",) and quiet.moves == () and quiet.segments[-1].score <= 0.2
    assert "a: waits in the tail until a move costs nothing" in quiet.describe()
    # b changes: everything from b on is recomputed anyway, so a settles ahead of it for free
    free = asm.assemble({**BASE, "a": "A6", "b": "B8"}, ["system"]).report
    assert free.order == ("system", "map", "c", "a", "b") and free.kept_segments == 3
    moves = [(m.name, m.reason, m.before, m.after) for m in free.moves]  # rates too close to reorder: it settles
    assert moves == [("a", "settled", 4, 3)]
    assert "text changed in 6 of 11 turns; score 0.06 <= 0.20" in free.moves[0].detail
    assert free.waiting == () and not free.segments[3].volatile


def test_the_tail_orders_itself_by_change_rate_only_when_that_costs_nothing() -> None:
    joined = [BASE] + [{**BASE, "a": f"A{t}", "b": f"B{t}"} for t in range(1, 4)]  # both join the tail together
    quiet_a = [{**BASE, "a": "A3", "b": f"B{t}"} for t in range(4, 8)]  # then only b (already last) changes
    asm = ContextAssembler()
    reports = [asm.assemble(seg, ["system"]).report for seg in joined + quiet_a]
    assert reports[3].order == ("system", "map", "c", "a", "b")  # promoted together: equal rates, their order
    assert all(r.order == reports[3].order and r.kept_segments == 4 for r in reports[4:])  # a stays ahead
    assert not [m for r in reports for m in r.moves if m.reason == "reordered"]
    quiet_b = [{**BASE, "a": f"A{t}", "b": "B3"} for t in range(4, 8)]  # only a changes: a and b recomputed anyway
    asm = ContextAssembler()
    reports = [asm.assemble(seg, ["system"]).report for seg in joined + quiet_b]
    assert reports[4].order == ("system", "map", "c", "b", "a") and reports[4].kept_segments == 3
    moved = [(m.name, m.reason, m.before, m.after) for m in reports[4].moves]
    assert moved == [("b", "reordered", 4, 3), ("a", "reordered", 3, 4)]
    assert "changes 1.00/turn" in reports[4].moves[1].detail
    assert all(r.order == reports[4].order and r.kept_segments == 4 for r in reports[5:])  # then it stays


def test_tail_segments_with_close_change_rates_do_not_swap_back_and_forth() -> None:
    """a and b both change often, taking turns: a swap would be free the turn it is made (the segment ahead
    changed) but cost the next turn (the one moved last changes then), so the tail keeps its order while
    their rates stay within reorder_margin; with no margin it flaps."""
    joined = [BASE] + [{**BASE, "a": f"A{t}", "b": f"B{t}"} for t in range(1, 4)]  # both in the tail: a, b
    # from turn 4: b changes on even turns, a on odd ones
    taking_turns = [{**BASE, "a": f"A{t - (t + 1) % 2}", "b": f"B{t - t % 2}"} for t in range(4, 10)]
    kept_while_b_changes = [4, 3, 4, 3, 4, 3]  # b changes on even turns: a, ahead of it, is kept
    asm = ContextAssembler()
    reports = [asm.assemble(seg, ["system"]).report for seg in joined + taking_turns][4:]
    assert {r.order[-2:] for r in reports} == {("a", "b")}
    assert [r.kept_segments for r in reports] == kept_while_b_changes
    flapping = ContextAssembler(AssemblerPolicy(reorder_margin=0.0))
    reports = [flapping.assemble(seg, ["system"]).report for seg in joined + taking_turns][4:]
    assert {r.order[-2:] for r in reports} == {("a", "b"), ("b", "a")}
    assert [r.kept_segments for r in reports] == [4, 3, 3, 3, 3, 3]  # each swap costs the next turn


def test_a_quiet_segment_alone_in_the_tail_settles_in_place() -> None:
    asm = ContextAssembler()
    for seg in edits("a", 4):
        asm.assemble(seg, ["system"])
    reports = [asm.assemble({**BASE, "a": "A0/3"}, ["system"]).report for _ in range(4)]
    assert all(r.order == ("system", "map", "b", "c", "a") and r.waiting == () for r in reports)
    settled = [(i, m.reason, m.before, m.after) for i, r in enumerate(reports) for m in r.moves]
    assert settled == [(2, "settled", 4, 4)]


def test_forgotten_after_a_long_absence() -> None:
    asm = ContextAssembler(AssemblerPolicy(forget_after=2))
    asm.assemble(BASE, ["system"])
    without_c = {k: v for k, v in BASE.items() if k != "c"}
    for _ in range(3):
        asm.assemble(without_c, ["system"])
    back = asm.assemble(BASE, ["system"])
    assert [(m.name, m.reason) for m in back.report.moves] == [("c", "new")]


def test_mapping_and_pair_inputs_are_the_same() -> None:
    assert ContextAssembler().assemble(BASE, ["system"]) == ContextAssembler().assemble(list(BASE.items()), ("system",))


# -- persistence -----------------------------------------------------------------------------


def test_state_round_trips_through_json_and_continues_identically() -> None:
    history = [(s, ("system",)) for s in edits("b", 5)]
    original = ContextAssembler(AssemblerPolicy(decay=0.6))
    run(history, original)
    restored = ContextAssembler.from_state(json.loads(json.dumps(original.export_state())))
    assert restored.export_state() == original.export_state()
    assert restored.policy == AssemblerPolicy(decay=0.6)
    more = [({**BASE, "b": "B/x", "c": f"C{t}"}, ("system",)) for t in range(4)]
    assert run(more, restored) == run(more, original)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(format="other/1"),
        lambda s: s.update(turn="3"),
        lambda s: s.update(order=[*s["order"], "ghost"]),
        lambda s: s.update(order=[*s["order"], s["order"][0]]),
        lambda s: s.update(pinned=["ghost"]),
        lambda s: s["segments"]["a"].pop("score"),
        lambda s: s["segments"]["a"].update(seen="many"),
        lambda s: s.update(policy={"decay": 2.0}),
        lambda s: s.update(policy={"speed": 1}),
        lambda s: s.update(segments=[]),
        lambda s: s.update(body=[1]),
        lambda s: s["segments"]["a"].update(volatile=1),
        lambda s: s["segments"]["a"].update(score=True),
    ],
)
def test_bad_state_is_refused(mutate: Callable[[dict[str, object]], None]) -> None:
    asm = ContextAssembler()
    asm.assemble(BASE, ["system"])
    state = json.loads(json.dumps(asm.export_state()))
    mutate(state)
    with pytest.raises(InvalidInputError):
        ContextAssembler.from_state(state)


def test_a_non_mapping_state_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        ContextAssembler.from_state([])  # type: ignore[arg-type]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "pinned", "message"),
    [
        ([("a", "A"), ("a", "B")], (), "appears twice"),
        ([("a", 1)], (), "pair of strings"),
        ([("a", "A", "x")], (), "pair of strings"),
        ([("a", "A")], "a", "not a single string"),
        ([("a", "A")], ("b",), "not in this turn: b"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(segments: object, pinned: object, message: str) -> None:
    asm = ContextAssembler()
    asm.assemble(BASE, ["system"])
    before = asm.export_state()
    with pytest.raises(InvalidInputError, match=message):
        asm.assemble(segments, pinned)  # type: ignore[arg-type]
    assert asm.export_state() == before


@pytest.mark.parametrize(
    "values",
    [
        {"decay": 0.0},
        {"decay": 1.0},
        {"volatile_at": 0.1},
        {"stable_at": -0.1},
        {"forget_after": 0},
        {"decay": "x"},
        {"reorder_margin": -0.1},
        {"reorder_margin": 1.5},
    ],
)
def test_bad_policy_is_a_config_error(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AssemblerPolicy.from_mapping(values)


# -- properties ------------------------------------------------------------------------------

NAMES = ("sys", "map", "a", "b", "c", "d")


@st.composite
def turns(draw: st.DrawFn) -> Turn:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1))
    segments = {name: draw(st.sampled_from(("", "x", "y", "z\u00e9"))) for name in names}
    pinned = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=2)))
    return segments, pinned


histories = st.lists(turns(), min_size=1, max_size=14)


@given(histories)
def test_every_assembly_is_a_permutation_that_respects_pins(history: list[Turn]) -> None:
    previous: tuple[str, ...] = ()
    for (segments, pinned), out in zip(history, run(history), strict=True):
        assert sorted(out.segments) == sorted(segments.items())  # nothing lost, duplicated or modified
        head = tuple(name for name in segments if name in pinned)
        assert out.report.order[: len(head)] == head
        assert out.report.order == tuple(name for name, _ in out.segments)
        assert [s.name for s in out.report.segments] == list(out.report.order)
        if not out.report.moves and head == previous[: len(head)] and set(segments) == set(previous):
            assert out.report.order == previous  # nothing moved: the order stays
        previous = out.report.order


@given(histories)
def test_the_order_is_deterministic_for_a_given_history(history: list[Turn]) -> None:
    assert run(history) == run(history)


@given(histories, histories)
def test_an_imported_state_continues_exactly(first: list[Turn], then: list[Turn]) -> None:
    original = ContextAssembler()
    run(first, original)
    restored = ContextAssembler.from_state(json.loads(json.dumps(original.export_state())))
    assert run(then, restored) == run(then, original)


# -- the real model --------------------------------------------------------------------------


def test_assembled_prefix_is_exact_and_reuses_more_after_edits(real: KVSession, cold: ColdFn) -> None:
    """An edit every turn to calc: warm == cold for each assembled prefix, and once calc is last the
    reuse covers every other segment (the given order would stop inside calc)."""
    base = dict(SEGMENTS)
    asm = ContextAssembler()
    reused: list[int] = []
    for turn in range(4):
        calc = base["calc"].replace("result = 0\n", f"result = 0  # turn {turn}\n") if turn else base["calc"]
        assembly = asm.assemble({**base, "calc": calc}, pinned=["system"])
        status = real.ensure_prefix(real.prefix(assembly.segments))
        real.prefill_suffix(real.suffix(SUFFIX))
        assert decode_answer(real) == cold(assembly.segments, SUFFIX), f"turn {turn}"
        reused.append(status.reused_tokens)
    assert assembly.report.order == ("system", "repo_map", "text", "calc")
    assert real.explain_context().last_divergence is not None
    assert real.explain_context().last_divergence.segment == "calc"
    ahead = len(real.tokenize(base["system"] + base["repo_map"] + base["text"]))
    assert reused[3] >= ahead > reused[1]


@pytest.mark.slow
def test_the_demo_shows_one_edit_moving_nothing_and_the_third_edit_costing_least() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llamanode.cli", "demo", "--threads", "1", "--max-tokens", "4"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    prefilled = [int(n) for n in re.findall(r"\+ prefilled (\d+) prefix tokens", proc.stdout)]
    assert len(prefilled) == 6 and prefilled[1] == prefilled[2] == 0
    assert prefilled[5] < prefilled[3] < prefilled[4]
    assert "assembler: config.py changed (score 0.50, no clear evidence yet): order kept" in proc.stdout
    assert "assembler: config.py volatile: text changed in 2 of 5 turns" in proc.stdout
