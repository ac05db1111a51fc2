"""Tool calls on the real default model (SmolLM2: no tool support in its template, so the generic fallback).

Every call the grammar lets the model emit must parse and validate against its function's schema.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import open_real
from llamanode import Config, DecodeConfig, KVSession
from llamanode.chat import ChatMessage, ChatTemplate, discover_special_tokens, messages_from_mappings
from llamanode.tools import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    CallFinished,
    ContentDelta,
    ToolEvent,
    ToolFormat,
    ToolPlan,
    Tools,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file of the repository",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
            "required": ["path"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, READ_FILE)}  # type: ignore[index]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def template(model_keeper: KVSession) -> ChatTemplate:
    source = model_keeper.identity.chat_template
    specials = discover_special_tokens(source or "", model_keeper.tokenize, ("<|im_start|>", "<|im_end|>"))
    return ChatTemplate(source, special_tokens=specials)


@pytest.fixture(scope="module")
def session(model_keeper: KVSession) -> Any:
    with open_real(Config(num_ctx=4096, num_threads=1)) as s:
        yield s


def run(
    session: KVSession, plan: ToolPlan, messages: Sequence[ChatMessage], **decode: Any
) -> tuple[str, list[ToolEvent], str]:
    """Prompt, decode with the plan's grammar, parse: (text, events, stop reason)."""
    split = plan.split(messages)
    session.ensure_prefix(session.prefix([("prompt", split.prefix)]))
    session.prefill_suffix(session.suffix(split.suffix))
    chunks = list(session.decode(DecodeConfig(**{"max_tokens": 96, **decode, **plan.decode_options()})))
    text = "".join(c.text for c in chunks)
    parser = plan.parser()
    events: list[ToolEvent] = parser.feed(text) + parser.finish() if parser else [ContentDelta(text)]
    assert chunks[-1].report is not None
    return text, events, chunks[-1].report.stop_reason


def calls_of(events: Sequence[ToolEvent]) -> list[CallFinished]:
    return [e for e in events if isinstance(e, CallFinished)]


def valid_call(call: CallFinished, schemas: dict[str, Any]) -> dict[str, Any]:
    assert call.complete, f"call cut off: {call}"
    args = call.tool_call().arguments_value()
    jsonschema.validate(args, schemas[call.name])
    return args


def test_required_makes_the_default_model_call_a_tool(session: KVSession, template: ChatTemplate) -> None:
    plan = ToolPlan(template, Tools.from_openai([WEATHER, READ_FILE], "required", parallel=False))
    assert plan.format is GENERIC
    text, events, stop = run(session, plan, messages_from_mappings(ASK))
    calls = calls_of(events)
    assert len(calls) == 1 and stop == "eog", text  # one call, then the grammar allows only the end
    assert [e for e in events if isinstance(e, ContentDelta)] == []
    valid_call(calls[0], SCHEMAS)


def test_a_named_function_is_the_one_called(session: KVSession, template: ChatTemplate) -> None:
    choice = {"type": "function", "function": {"name": "read_file"}}
    plan = ToolPlan(template, Tools.from_openai([WEATHER, READ_FILE], choice, parallel=False))
    _, events, _ = run(session, plan, messages_from_mappings(ASK))
    (call,) = calls_of(events)
    assert call.name == "read_file"
    valid_call(call, SCHEMAS)


@pytest.mark.parametrize("fmt", [GENERIC, HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
def test_each_formats_grammar_writes_what_its_parser_reads(
    session: KVSession, template: ChatTemplate, fmt: ToolFormat
) -> None:
    """The grammar forces the syntax whatever the model, so the default model can check every format."""
    plan = ToolPlan(template, Tools.from_openai([WEATHER, READ_FILE], "required", parallel=False), fmt)
    text, events, stop = run(session, plan, messages_from_mappings(ASK))
    (call,) = calls_of(events)
    assert stop == "eog" and [e for e in events if isinstance(e, ContentDelta)] == [], text
    valid_call(call, SCHEMAS)
    assert text.startswith(fmt.openers[0]) or (fmt.body_openers and text.startswith(fmt.body_openers[0]))


def test_parallel_calls_all_validate(session: KVSession, template: ChatTemplate) -> None:
    plan = ToolPlan(template, Tools.from_openai([WEATHER, READ_FILE], "required"))
    _, events, stop = run(session, plan, messages_from_mappings(ASK), max_tokens=120)
    calls = calls_of(events)
    assert calls
    for call in calls:
        if call.complete:
            valid_call(call, SCHEMAS)
        else:  # only a length cut may leave the last call open
            assert stop == "max_tokens" and call is calls[-1]


def test_auto_lets_the_model_choose_and_a_call_it_starts_is_constrained(
    session: KVSession, template: ChatTemplate
) -> None:
    """A conversation whose earlier turns were calls: the model starts a call on its own (greedy)."""

    def called(i: int, city: str) -> dict[str, Any]:
        args = json.dumps({"city": city})
        fn = {"name": "get_weather", "arguments": args}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": f"c{i}", "type": "function", "function": fn}],
        }

    conversation = [
        {"role": "user", "content": "Weather in Paris?"},
        called(1, "Paris"),
        {"role": "user", "content": "Weather in Rome?"},
        called(2, "Rome"),
        {"role": "user", "content": "Weather in London?"},
    ]
    plan = ToolPlan(template, Tools.from_openai([WEATHER], "auto", parallel=False))
    assert plan.decode_options()["grammar_triggers"] == ("<tool_call>",)
    text, events, stop = run(session, plan, messages_from_mappings(conversation))
    (call,) = calls_of(events)
    assert valid_call(call, SCHEMAS) == {"city": "London"} and stop == "eog", text
    _, plain_events, _ = run(session, plan, messages_from_mappings(ASK))  # here it answers in prose
    assert calls_of(plain_events) == [] and isinstance(plain_events[0], ContentDelta)


def test_the_next_turn_reuses_everything_before_the_generated_call(session: KVSession, template: ChatTemplate) -> None:
    """The fallback renders a past call exactly as the grammar made the model write it."""
    plan = ToolPlan(template, Tools.from_openai([WEATHER], "required", parallel=False))
    messages = messages_from_mappings(ASK)
    first_prompt = session.tokenize(plan.render(messages))
    text, events, _ = run(session, plan, messages)
    (call,) = calls_of(events)
    turn = [*messages, ChatMessage("assistant", "", None, (call.tool_call(),))]
    turn += [ChatMessage("tool", "18 C, sunny", tool_call_id=call.id), ChatMessage("user", "Thanks. And Rome?")]
    rendered = plan.render(turn)
    assert rendered.startswith(plan.render(messages) + text + "<|im_end|>\n")
    status = session.ensure_prefix(session.prefix([("prompt", plan.split(turn).prefix)]))
    assert status.reused_tokens >= len(first_prompt)


# -- the grammar, property-tested on the real model --------------------------------------------------

_LEAF = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"enum": ["red", "green", 3]},
        {"type": "array", "items": {"type": "integer"}},
    ]
)
_PROPERTY = _LEAF | st.builds(
    lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
    st.dictionaries(st.sampled_from(["x", "y"]), _LEAF, min_size=1, max_size=2),
)


@st.composite
def _function_schema(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(st.sampled_from(["path", "count", "flag", "mode", "items"]), _PROPERTY, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
    return {"type": "object", "properties": props, "required": required}


def _check_every_call(
    session: KVSession, template: ChatTemplate, schema: dict[str, Any], seed: int, temp: float
) -> None:
    tool = {"type": "function", "function": {"name": "act", "description": "Do it", "parameters": schema}}
    plan = ToolPlan(template, Tools.from_openai([tool], "required", parallel=False))
    text, events, stop = run(session, plan, [ChatMessage("user", "Go.")], max_tokens=160, temperature=temp, seed=seed)
    (call,) = calls_of(events)
    if not call.complete:
        assert stop == "max_tokens", text  # only a length cut may leave a call open
        return
    assert stop == "eog", text
    jsonschema.validate(call.tool_call().arguments_value(), schema)


_CASES = {"schema": _function_schema(), "seed": st.integers(0, 2**16), "temp": st.sampled_from([0.0, 0.7, 1.2])}


@settings(max_examples=6)
@given(**_CASES)
def test_every_call_the_grammar_allows_parses_and_validates(
    session: KVSession, template: ChatTemplate, schema: dict[str, Any], seed: int, temp: float
) -> None:
    _check_every_call(session, template, schema, seed, temp)


@pytest.mark.slow
@settings(max_examples=80)
@given(**_CASES)
def test_every_call_the_grammar_allows_parses_and_validates_many(
    session: KVSession, template: ChatTemplate, schema: dict[str, Any], seed: int, temp: float
) -> None:
    _check_every_call(session, template, schema, seed, temp)


# -- lazy grammars: the trigger token never runs past the trigger ----------------------------------


def test_a_token_overshooting_a_trigger_is_never_sampled() -> None:
    """llama.cpp aborts the process if the bytes after a trigger break the grammar; here " Paris" would
    complete the trigger "Par" and run past it. Run in a child process so a regression fails, not kills, pytest."""
    code = """
        import llamanode as ln
        ask = "<|im_start|>user\\nWhat is the capital of France? One sentence.<|im_end|>\\n<|im_start|>assistant\\n"
        with ln.open_session(config=ln.Config(num_ctx=512, num_threads=1)) as s:
            for grammar in ('root ::= "ParXYZ"', 'root ::= "Par" [a-z]{0,3} "!"'):
                s.ensure_prefix(s.prefix([("ask", ask)]))
                config = ln.DecodeConfig(max_tokens=24, grammar=grammar, grammar_triggers=("Par",))
                print(repr("".join(c.text for c in s.decode(config))))
            s.ensure_prefix(s.prefix([("ask", ask)]))
            print(repr("".join(c.text for c in s.decode(ln.DecodeConfig(max_tokens=24)))))
    """
    run_ = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert run_.returncode == 0, run_.stderr[-2000:]
    first, second, unconstrained = (ast.literal_eval(line) for line in run_.stdout.splitlines())
    assert "Paris" in unconstrained  # the token the guard had to refuse
    for text in (first, second):
        assert "Paris" not in text
        assert "Par" not in text or "ParXYZ" in text or text.endswith("!")
