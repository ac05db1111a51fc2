"""The incremental tool-call parser: every native format, markers split across deltas, nothing lost."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamanode import ToolError
from llamanode.tools import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ArgumentsDelta,
    CallFinished,
    CallStarted,
    ContentDelta,
    ToolCall,
    ToolCallParser,
    ToolEvent,
    ToolFormat,
    ToolSpec,
)

SPECS = (ToolSpec("get_weather"), ToolSpec("read_file"), ToolSpec("x.y:z-1"))


def ids() -> Iterator[str]:
    return (f"call_{i}" for i in itertools.count())


def parse(fmt: ToolFormat, deltas: Sequence[str]) -> list[ToolEvent]:
    counter = ids()
    parser = ToolCallParser(fmt, SPECS, lambda: next(counter))
    events: list[ToolEvent] = []
    for delta in deltas:
        events += parser.feed(delta)
    return events + parser.finish()


def summary(events: Sequence[ToolEvent]) -> tuple[str, list[tuple[str, str, str]]]:
    """(all content, [(id, name, arguments)]) — and checks the event protocol on the way."""
    content, calls, open_args = "", [], ""
    started: CallStarted | None = None
    for event in events:
        if isinstance(event, ContentDelta):
            assert started is None, "no content inside a call"
            content += event.text
        elif isinstance(event, CallStarted):
            assert started is None and event.index == len(calls)
            started, open_args = event, ""
        elif isinstance(event, ArgumentsDelta):
            assert started is not None and event.index == started.index and event.text
            open_args += event.text
        else:
            assert isinstance(event, CallFinished) and started is not None and event.index == started.index
            assert (event.id, event.name, event.arguments) == (started.id, started.name, open_args)
            calls.append((event.id, event.name, event.arguments))
            started = None
    assert started is None, "every started call finishes"
    return content, calls


def every_split(text: str) -> Iterator[list[str]]:
    """The text cut once at every position, and one character at a time."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)


HERMES_TWO = (
    'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "a}b\\"{.py"}}\n</tool_call>'
)
HERMES_CALLS = [
    ("call_0", "get_weather", '{"city": "Paris"}'),
    ("call_1", "read_file", '{"path": "a}b\\"{.py"}'),
]


@pytest.mark.parametrize("fmt", [HERMES, GENERIC])
def test_hermes_syntax_split_anywhere(fmt: ToolFormat) -> None:
    for deltas in every_split(HERMES_TWO):
        assert summary(parse(fmt, deltas)) == ("Let me look.", HERMES_CALLS), deltas


def test_llama3_json_call_with_and_without_python_tag() -> None:
    plain = '{"name": "get_weather", "parameters": {"city": "Oslo", "days": [1, 2]}}'
    tagged = "<|python_tag|>" + plain
    for text in (plain, tagged, "  \n" + plain + "\n"):
        for deltas in every_split(text):
            assert summary(parse(LLAMA3, deltas)) == (
                "",
                [("call_0", "get_weather", '{"city": "Oslo", "days": [1, 2]}')],
            )


def test_mistral_tool_calls_list_split_anywhere() -> None:
    text = '[TOOL_CALLS][{"name": "read_file", "arguments": {"path": "x"}}, {"name": "x.y:z-1", "arguments": {}}]'
    expected = ("", [("call_0", "read_file", '{"path": "x"}'), ("call_1", "x.y:z-1", "{}")])
    for deltas in every_split(text):
        assert summary(parse(MISTRAL, deltas)) == expected, deltas


def test_calls_stream_their_arguments_before_the_call_ends() -> None:
    counter = ids()
    parser = ToolCallParser(GENERIC, SPECS, lambda: next(counter))
    assert parser.feed('<tool_call>\n{"name": "read_') == []
    assert parser.feed('file", "arguments": {"pa') == [CallStarted(0, "call_0", "read_file"), ArgumentsDelta(0, '{"pa')]
    assert parser.feed('th": "a"}}\n</tool') == [
        ArgumentsDelta(0, 'th": "a"}'),
        CallFinished(0, "call_0", "read_file", '{"path": "a"}', True),
    ]
    assert parser.feed("_call>") == [] and parser.calls == 1
    assert parser.finish() == []


def test_text_that_only_looks_like_a_marker_comes_out_unchanged() -> None:
    texts = [
        "a < b and <tool is not <tool_call",
        "x <tool_call> not json",
        '<tool_call>\n{"name": "unknown_fn", "arguments": {}}\n</tool_call>',
        '<tool_call>{"arguments": {}, "name": "get_weather"}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": "text"}',
        "trailing whitespace  \n\n",
        "",
    ]
    for text in texts:
        for deltas in every_split(text):
            assert summary(parse(GENERIC, deltas)) == (text, []), deltas


def test_llama3_braces_in_prose_are_content() -> None:
    text = 'Use {"name": 1} or {"nam'
    for deltas in every_split(text):
        assert summary(parse(LLAMA3, deltas)) == (text, [])


def test_mistral_marker_without_a_list_is_content() -> None:
    for text in ("[TOOL_CALLS] nothing", "[TOOL_CALLS][1, 2]"):
        assert summary(parse(MISTRAL, [text])) == (text, [])


def test_a_call_cut_off_inside_its_arguments_finishes_incomplete() -> None:
    events = parse(GENERIC, ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'])
    finished = events[-1]
    assert isinstance(finished, CallFinished) and not finished.complete
    assert finished.arguments == '{"city": "Par'
    with pytest.raises(ToolError):
        finished.tool_call()


@pytest.mark.parametrize("cut", ["", "\n", "\n</tool", "\n</tool_call"])
def test_a_call_cut_off_after_its_arguments_is_complete_and_its_cut_closer_is_no_content(cut: str) -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}' + ("}" + cut if cut else "")
    assert summary(parse(GENERIC, [text])) == ("", [("call_0", "get_weather", '{"city": "Paris"}')])


def test_a_marker_cut_off_before_the_call_started_is_content() -> None:
    assert summary(parse(GENERIC, ['Hi <tool_call>\n{"name": "get_w'])) == ('Hi <tool_call>\n{"name": "get_w', [])


def test_complete_calls_give_valid_tool_calls() -> None:
    finished = [e for e in parse(HERMES, [HERMES_TWO]) if isinstance(e, CallFinished)]
    calls = [e.tool_call() for e in finished]
    assert calls[0] == ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    assert calls[1].arguments_value() == {"path": 'a}b"{.py'}


def test_only_the_functions_given_are_calls() -> None:
    parser = ToolCallParser(GENERIC, [ToolSpec("read_file")])
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    assert summary(parser.feed(text) + parser.finish()) == (text, [])


# -- property: any mix of prose and calls, cut into any deltas ------------------------------------

_PROSE = st.text(alphabet=st.sampled_from(list('ab <>_{}[]"\n:,tool_cal|TOOLS')), max_size=12)
_ARGS = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=3,
)
_CALL = st.tuples(st.sampled_from([s.name for s in SPECS]), _ARGS)


def _write_call(fmt: ToolFormat, name: str, args: dict[str, object]) -> str:
    body = json.dumps({"name": name, fmt.args_key: args}, ensure_ascii=False)
    if fmt.listed:
        return f"{fmt.openers[0]}[{body}]"
    if fmt.body_openers:
        return body
    return f"{fmt.openers[0]}\n{body}\n{fmt.closer}"


def _clean(prose: str, fmt: ToolFormat) -> str:
    """Prose that holds no call marker (a partial one is fine: the parser must hold it back)."""
    if any(marker in prose for marker in fmt.triggers) or "{" in prose:
        return prose.replace("<", "(").replace("[", "(").replace("{", "(")
    return prose


@st.composite
def _conversation(draw: st.DrawFn, fmt: ToolFormat) -> tuple[list[str], str, list[tuple[str, str]]]:
    pieces, content, calls = [], "", []
    for i in range(draw(st.integers(0, 4))):
        prose = _clean(draw(_PROSE), fmt)
        name, args = draw(_CALL)
        gap = draw(st.sampled_from(["", " ", "\n", "\n\n"]))
        pieces += [prose, gap, _write_call(fmt, name, args), gap]
        content += prose.strip(" \t\r\n") if i else prose.rstrip(" \t\r\n")  # whitespace touching a call goes
        calls.append((name, json.dumps(args, ensure_ascii=False)))
    tail = _clean(draw(_PROSE), fmt)
    pieces.append(tail)
    content += tail.lstrip(" \t\r\n") if calls else tail
    text = "".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    deltas = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    return deltas, content, calls


@pytest.mark.parametrize("fmt", [GENERIC, HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
@given(data=st.data())
def test_any_mix_of_prose_and_calls_in_any_deltas(fmt: ToolFormat, data: st.DataObject) -> None:
    deltas, content, calls = data.draw(_conversation(fmt))
    got_content, got_calls = summary(parse(fmt, deltas))
    assert [(name, args) for _, name, args in got_calls] == calls
    assert all(json.loads(args) is not None for _, _, args in got_calls)
    assert got_content == content
