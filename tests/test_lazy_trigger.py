"""The lazy-grammar trigger watch: mirrors llama.cpp's trigger search and spots tokens that overshoot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llamanode.backends.llamacpp.lazy import TriggerWatch, trigger_pattern


def test_trigger_patterns_are_escaped_literals() -> None:
    assert trigger_pattern("<tool_call>") == b"<tool_call>"
    assert trigger_pattern("[TOOL_CALLS]") == b"\\[TOOL_CALLS\\]"
    assert trigger_pattern('{"name"') == b'\\{"name"'
    assert trigger_pattern("a.b*c|^$") == b"a\\.b\\*c\\|\\^\\$"
    assert trigger_pattern("é") == "é".encode()


def test_a_piece_that_ends_exactly_at_the_trigger_fires_it() -> None:
    watch = TriggerWatch(["<tool_call>"])
    for piece in (b"Sure ", b"<", b"tool", b"_call"):
        assert not watch.overshoots(piece)
        watch.accept(piece)
        assert not watch.fired
    assert not watch.overshoots(b">")
    watch.accept(b">")
    assert watch.fired


def test_pieces_that_complete_a_trigger_and_run_past_it_overshoot() -> None:
    watch = TriggerWatch(["<tool_call>"])
    watch.accept(b"x <tool_c")
    assert watch.overshoots(b"all>{")
    assert watch.overshoots(b"all>\n")
    assert not watch.overshoots(b"all>")
    assert not watch.overshoots(b"allow")  # no trigger at all
    assert TriggerWatch(["Par"]).overshoots(b" Paris")  # the whole trigger inside one token
    assert not TriggerWatch(["Par"]).overshoots(b" Par")


def test_the_first_trigger_in_order_decides_like_llama_cpp() -> None:
    watch = TriggerWatch(["<|python_tag|>", '{"name"'])
    assert watch.overshoots(b'{"name": ')
    assert not watch.overshoots(b'{"name"')
    both = TriggerWatch(["ab", "b"])
    assert both.overshoots(b"abc") and not both.overshoots(b"ab")


def test_the_tail_is_kept_across_many_pieces() -> None:
    watch = TriggerWatch(["[TOOL_CALLS]"])
    for ch in "prose [TOOL_CALLS":
        watch.accept(ch.encode())
    assert not watch.fired and watch.overshoots(b"][") and not watch.overshoots(b"]")
    single = TriggerWatch(["{"])
    single.accept(b"abc")
    assert single.overshoots(b"{x") and not single.overshoots(b"{")


_PIECES = st.lists(st.binary(min_size=1, max_size=4).map(lambda b: bytes(x % 4 + 97 for x in b)), max_size=30)
_TRIGGERS = st.lists(st.text(alphabet="abcd", min_size=1, max_size=4), min_size=1, max_size=3)


@given(triggers=_TRIGGERS, pieces=_PIECES)
def test_the_watch_agrees_with_a_search_over_the_whole_buffer(triggers: list[str], pieces: list[bytes]) -> None:
    """Reference: llama.cpp searches the whole buffer, trying the triggers in order."""
    watch, buffer = TriggerWatch(triggers), b""
    for piece in pieces:
        text = buffer + piece
        hits = [(text.find(t.encode()), t) for t in triggers]
        first = next(((at, t) for at, t in hits if at >= 0), None)
        assert watch.overshoots(piece) == (first is not None and first[0] + len(first[1]) < len(text))
        if first is not None and first[0] + len(first[1]) < len(text):
            continue  # the guard refuses this piece: it is never accepted
        watch.accept(piece)
        buffer = text
        assert watch.fired == (first is not None)
        if watch.fired:
            break
