"""segment_plan on token lists: which runs are kept, where they go, what is recomputed."""

from __future__ import annotations

from llamanode.segment_plan import Piece, Span, plan_reuse


def spans(*parts: tuple[str, int]) -> list[Span]:
    out, at = [], 0
    for name, n in parts:
        out.append(Span(name, f"hash-{name}-{n}", at, at + n))
        at += n
    return out


def seq(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


A, B, C = seq(100, 10), seq(200, 40), seq(300, 50)


def test_a_removed_segment_moves_the_rest_left_and_recomputes_its_boundary() -> None:
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + C, spans(("a", 10), ("c", 50)), 10,
                      "boundary", 0.1, 8)  # fmt: skip
    assert plan.pieces == (Piece(old_start=55, new_start=15, length=45),)  # c's first 5 tokens recomputed
    assert plan.computed == ((10, 15),)


def test_tail_selection_recomputes_the_last_kept_tokens() -> None:
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + C, spans(("a", 10), ("c", 50)), 10,
                      "tail", 0.1, 8)  # fmt: skip
    assert plan.pieces == (Piece(old_start=50, new_start=10, length=45),)
    assert plan.computed == ((55, 60),)


def test_a_shift_is_always_followed_by_a_prefill() -> None:
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + C, spans(("a", 10), ("c", 50)), 10,
                      "boundary", 0.0, 8)  # fmt: skip
    assert plan.pieces == (Piece(50, 10, 48),) and plan.computed == ((58, 60),)


def test_an_edited_segment_keeps_its_head_and_tail() -> None:
    edited = [*B[:20], 999, 998, *B[21:]]
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + edited + C,
                      spans(("a", 10), ("b", 41), ("c", 50)), 30, "boundary", 0.0, 8)  # fmt: skip
    # b's tail and c move together by +1: one piece; the edit itself is prefilled
    assert plan.pieces == (Piece(31, 32, 69),) and plan.computed == ((30, 32),)
    assert [(r.segment, r.shift, r.length) for r in plan.runs] == [("b", 1, 19), ("c", 1, 50)]


def test_swapped_segments_keep_the_heavier_in_order_and_recompute_the_other() -> None:
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + C + B,
                      spans(("a", 10), ("c", 50), ("b", 40)), 10, "boundary", 0.0, 8)  # fmt: skip
    assert [r.segment for r in plan.runs] == ["c"]  # cells only move, never reorder: c (50) beats b (40)
    assert plan.pieces == (Piece(50, 10, 50),) and plan.computed == ((60, 100),)


def test_short_runs_are_prefilled_and_said_so() -> None:
    plan = plan_reuse(A + B, spans(("a", 10), ("b", 40)), A + [7] * 5 + B[:6], spans(("a", 15), ("b", 6)), 10,
                      "boundary", 0.1, 8)  # fmt: skip
    assert plan.pieces == () and plan.computed == ((10, 21),) and "at least 8" in plan.note


def test_no_range_of_one_token_after_position_zero() -> None:
    old, new = [5, 6, 7, 8, 9], [6, 7, 8, 9]
    plan = plan_reuse(old, spans(("x", 5)), new, spans(("x", 4)), 0, "boundary", 0.0, 2)
    assert all(end - start >= 2 or start == 0 for start, end in plan.computed)
    assert plan.computed == ((2, 4),) and plan.pieces == (Piece(1, 0, 2),)


def test_a_segment_edited_twice_keeps_the_run_between_the_edits_too() -> None:
    edited = [*B[:10], 999, *B[11:30], 998, 997, *B[31:]]
    plan = plan_reuse(A + B + C, spans(("a", 10), ("b", 40), ("c", 50)), A + edited + C,
                      spans(("a", 10), ("b", 41), ("c", 50)), 20, "boundary", 0.0, 8)  # fmt: skip
    assert [(r.old_start, r.new_start, r.length) for r in plan.runs] == [(21, 21, 19), (41, 42, 9), (50, 51, 50)]
    # the one changed token at 20 takes 21 along (never a batch of one); b's middle and tail + c are kept
    assert plan.pieces == (Piece(22, 22, 18), Piece(41, 42, 59)) and plan.computed == ((20, 22), (40, 42))
