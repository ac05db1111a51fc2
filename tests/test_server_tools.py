"""Tool calls in /v1/chat/completions, through the official `openai` client against a real server.

The default model's template has no tool support, so these run the generic fallback; `required` and a
named function force a call (the tiny model would rarely choose one by itself).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_support import ALIAS, agent_server, chat_tool, valid_arguments
from test_server_support import ServerProcess

__all__ = ["agent_server"]

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [chat_tool("get_weather"), chat_tool("read_file")]


def create(server: ServerProcess, workspace: str, **fields: Any) -> Any:
    fields = {"model": ALIAS, "messages": ASK, "tools": TOOLS, "max_tokens": 80, "temperature": 0, **fields}
    return server.client().chat.completions.create(extra_headers={"X-Llamanode-Workspace": workspace}, **fields)


def test_required_makes_the_model_call_and_the_arguments_validate(agent_server: ServerProcess) -> None:
    result = create(agent_server, "tc-required", tool_choice="required", parallel_tool_calls=False)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    valid_arguments(call.function.name, call.function.arguments)


def test_a_named_function_is_the_one_called(agent_server: ServerProcess) -> None:
    named = {"type": "function", "function": {"name": "read_file"}}
    result = create(agent_server, "tc-named", tool_choice=named, parallel_tool_calls=False)
    (call,) = result.choices[0].message.tool_calls
    assert call.function.name == "read_file"
    valid_arguments("read_file", call.function.arguments)


def test_streamed_deltas_reassemble_to_the_same_valid_call(agent_server: ServerProcess) -> None:
    plain = create(agent_server, "tc-stream-a", tool_choice="required", parallel_tool_calls=False)
    stream = create(agent_server, "tc-stream-b", tool_choice="required", parallel_tool_calls=False, stream=True)
    calls: dict[int, dict[str, Any]] = {}
    finishes = []
    for chunk in stream:
        delta = chunk.choices[0].delta
        finishes += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
        for part in delta.tool_calls or ():
            if part.index not in calls:  # the first delta of a call: its id, type and name, no arguments yet
                assert part.id and part.type == "function" and part.function.name and part.function.arguments == ""
                calls[part.index] = {"id": part.id, "name": part.function.name, "arguments": ""}
            else:
                assert part.id is None and part.function.name is None
                calls[part.index]["arguments"] += part.function.arguments
    assert finishes == ["tool_calls"]
    (only,) = calls.values()
    (expected,) = plain.choices[0].message.tool_calls
    assert (only["name"], only["arguments"]) == (expected.function.name, expected.function.arguments)
    valid_arguments(only["name"], only["arguments"])


def test_a_tool_result_round_trip_reuses_the_prompt(agent_server: ServerProcess) -> None:
    mark = agent_server.mark()
    warmed = agent_server.warm_next_done()
    first = create(agent_server, "tc-round", tool_choice="required", parallel_tool_calls=False)
    agent_server.wait_warm_next(warmed)  # the call was prefilled in the background after the answer went out...
    (call,) = first.choices[0].message.tool_calls
    turn = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius, sunny"},
    ]
    second = create(agent_server, "tc-round", messages=turn, tool_choice="none", max_tokens=24)
    assert second.choices[0].message.tool_calls is None and second.choices[0].finish_reason in ("stop", "length")
    usage = second.usage
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0.8 * usage.prompt_tokens
    logs = agent_server.wait_logs(mark, 2, "/v1/chat/completions")
    assert logs[0]["warm_next"] == "started"
    assert logs[1]["prefilled_tokens"] == 0  # ...so everything before the tool result was warm


def test_tool_choice_none_answers_in_text(agent_server: ServerProcess) -> None:
    result = create(agent_server, "tc-none", tool_choice="none", max_tokens=12)
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].message.content and result.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"tools": None, "tool_choice": "required"}, "invalid_value"),
        ({"response_format": {"type": "json_object"}, "tool_choice": "auto"}, "unsupported_feature"),
        ({"stop": ["\n"], "tool_choice": "required"}, "unsupported_feature"),
        ({"tools": [{"type": "retrieval"}]}, "invalid_value"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "invalid_input"),
        ({"messages": [*ASK, {"role": "tool", "content": "orphan result"}]}, "invalid_input"),
    ],
)
def test_malformed_tool_requests_are_400_and_name_the_problem(
    agent_server: ServerProcess, change: dict[str, Any], code: str
) -> None:
    body = {"model": ALIAS, "messages": ASK, "tools": TOOLS, "max_tokens": 8} | change
    with agent_server.http() as http:
        response = http.post("/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


def test_prompt_cache_key_routes_before_user_and_after_the_header(agent_server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    body = {"model": ALIAS, "messages": messages, "max_tokens": 4, "prompt_cache_key": "conv-7", "user": "bob"}
    mark = agent_server.mark()
    with agent_server.http() as http:
        for headers in ({}, {}, {"X-Llamanode-Workspace": "tc-explicit"}):
            assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    logs = agent_server.wait_logs(mark, 3, "/v1/chat/completions")
    assert [line["routed_by"] for line in logs] == ["prompt_cache_key", "prompt_cache_key", "header"]
    assert logs[0]["workspace"] == logs[1]["workspace"] and logs[0]["workspace"].startswith("cache-")
    assert logs[1]["reused_tokens"] > 0 and logs[2]["workspace"] == "tc-explicit"


# -- every emitted call parses and validates, whatever the schema and sampling ---------------------------

_LEAF = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"enum": ["low", "high", 3]},
        {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    ]
)


@st.composite
def function_schemas(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(st.sampled_from(["path", "count", "flag", "mode", "tags"]), _LEAF, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


CASES = {"schema": function_schemas(), "seed": st.integers(0, 2**16), "temperature": st.sampled_from([0.0, 0.8])}


def check_chat_calls(server: ServerProcess, schema: dict[str, Any], seed: int, temperature: float) -> None:
    tool = {"type": "function", "function": {"name": "act", "description": "Do it", "parameters": schema}}
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Go."}],
        "tools": [tool],
        "tool_choice": "required",
        "max_tokens": 120,
        "temperature": temperature,
        "seed": seed,
    }
    with server.http() as http:
        answer = http.post("/v1/chat/completions", json=body, headers={"X-Llamanode-Workspace": "tc-prop"}).json()
    choice = answer["choices"][0]
    if choice["finish_reason"] == "length":
        return  # only a length cut may leave a call open
    assert choice["finish_reason"] == "tool_calls", json.dumps(answer)
    for call in choice["message"]["tool_calls"]:
        valid_arguments(call["function"]["name"], call["function"]["arguments"], {"act": schema})


@settings(max_examples=3)
@given(**CASES)
def test_every_chat_tool_call_parses_and_validates(
    agent_server: ServerProcess, schema: dict[str, Any], seed: int, temperature: float
) -> None:
    check_chat_calls(agent_server, schema, seed, temperature)


@pytest.mark.slow
@settings(max_examples=40)
@given(**CASES)
def test_every_chat_tool_call_parses_and_validates_many(
    agent_server: ServerProcess, schema: dict[str, Any], seed: int, temperature: float
) -> None:
    check_chat_calls(agent_server, schema, seed, temperature)
