"""TextAssembler: token bytes -> safe text deltas, with stop strings held back until decided."""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st

from llamanode.textstream import TextAssembler, TextDelta


def expected_text(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the stop string that completes first (earliest end; the longer one on a tie).

    This is the only definition a stream can honour: once a stop string is complete the
    stream ends, whether or not a longer stop string that started earlier would complete later.
    """
    best: tuple[int, int] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best is None or (at + len(stop), at) < best):
            best = (at + len(stop), at)
    return (text, False) if best is None else (text[: best[1]], True)


def feed_all(pieces: list[bytes], stops: tuple[str, ...]) -> tuple[list[str], bool, list[int]]:
    """Feed pieces until a stop; returns deltas, stopped, and bytes fed before each delta."""
    assembler = TextAssembler(stops)
    deltas: list[str] = []
    fed: list[int] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        delta = assembler.feed(piece)
        deltas.append(delta.text)
        fed.append(total)
        if delta.stopped:
            return deltas, True, fed
    tail = assembler.finish()
    deltas.append(tail.text)
    fed.append(total)
    return deltas, tail.stopped, fed


def split_bytes(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


SMALL = "ab\n é€🙂你"
texts = st.one_of(st.text(alphabet=SMALL, max_size=40), st.text(max_size=40))
stop_lists = st.lists(st.text(alphabet=SMALL, min_size=1, max_size=4), max_size=3).map(tuple)


@given(text=texts, stops=stop_lists, cuts=st.lists(st.integers(0, 10_000), max_size=40))
@example(text="abc", stops=("abc", "b"), cuts=[1, 2])  # a stop inside a longer one, token by token
@example(text="abc", stops=("abc", "b"), cuts=[])  # ... and in one piece: the same answer
@example(text="xaby", stops=("aby", "b"), cuts=[2, 3])  # a later-starting stop completes first
@example(text="€€", stops=("€",), cuts=[1, 4])  # split inside the character that is the stop
def test_emitted_text_is_the_text_before_the_first_completed_stop(
    text: str, stops: tuple[str, ...], cuts: list[int]
) -> None:
    data = text.encode("utf-8")
    pieces = split_bytes(data, cuts)
    deltas, stopped, fed = feed_all(pieces, stops)
    want, want_stopped = expected_text(text, stops)
    assert "".join(deltas) == want
    assert stopped == want_stopped
    longest = max((len(s) for s in stops), default=0)
    emitted = ""
    for delta, n_bytes in zip(deltas, fed, strict=True):
        emitted += delta
        # never more than the answer (no partial stop, no replacement character, no half character)
        assert want.startswith(emitted)
        if not (stopped and delta is deltas[-1]):
            # never holds back more than a possible stop prefix: complete characters come out
            complete = data[:n_bytes].decode("utf-8", errors="ignore")  # only the tail can be cut
            assert len(emitted) >= len(complete) - max(longest - 1, 0)


@given(text=st.text(max_size=60), cuts=st.lists(st.integers(0, 10_000), max_size=60))
def test_without_stops_every_character_comes_out_whole_and_once(text: str, cuts: list[int]) -> None:
    data = text.encode("utf-8")
    assembler = TextAssembler()
    out = []
    for piece in split_bytes(data, cuts):
        delta = assembler.feed(piece)
        assert not delta.stopped
        out.append(delta.text)
        assert text.startswith("".join(out))
    out.append(assembler.finish().text)
    assert "".join(out) == text


def test_a_multibyte_character_split_over_three_tokens_is_held_until_complete() -> None:
    assembler = TextAssembler()
    raw = "🙂".encode()
    assert assembler.feed(raw[:1]).text == ""
    assert assembler.feed(raw[1:3]).text == ""
    assert assembler.feed(raw[3:]).text == "🙂"


def test_a_partial_stop_is_held_then_released_when_it_cannot_match() -> None:
    assembler = TextAssembler(("</end>",))
    assert assembler.feed(b"done </e").text == "done "
    assert assembler.feed(b"x").text == "</ex"


def test_a_partial_stop_is_flushed_by_finish() -> None:
    assembler = TextAssembler(("STOP",))
    assert assembler.feed(b"go ST").text == "go "
    tail = assembler.finish()
    assert (tail.text, tail.stopped) == ("ST", False)


def test_a_stop_across_tokens_cuts_exactly_before_it() -> None:
    assembler = TextAssembler(("\n\n",))
    assert assembler.feed(b"line\n").text == "line"
    delta = assembler.feed(b"\nmore")
    assert (delta.text, delta.stopped) == ("", True)


def test_truncated_utf8_at_the_end_becomes_one_replacement_character() -> None:
    assembler = TextAssembler()
    assert assembler.feed("é".encode()[:1]).text == ""
    assert assembler.finish().text == "\ufffd"


def test_the_delta_that_stops_names_the_stop_string_that_completed_first() -> None:
    asm = TextAssembler(["END", "ab"])
    assert asm.feed(b"xxEN") == TextDelta("xx", stopped=False, stop_string=None)
    assert asm.feed(b"Dab") == TextDelta("", stopped=True, stop_string="END")
