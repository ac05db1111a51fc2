"""The OpenAI Responses API through the official `openai` client (typed events) against a real server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from agent_support import ALIAS, agent_server, flat_tool, valid_arguments
from codex_shape import codex_request, next_turn
from test_server_support import ServerProcess, start_server
from test_server_tools import CASES

__all__ = ["agent_server"]

WORKSPACE = "X-Llamanode-Workspace"


def respond(server: ServerProcess, workspace: str | None = None, **fields: Any) -> Any:
    fields = {"model": ALIAS, "temperature": 0, **fields}
    headers = {WORKSPACE: workspace} if workspace else {}
    return server.client().responses.create(extra_headers=headers, **fields)


def check_event_order(events: Sequence[Any]) -> None:
    """The documented order: created, in_progress, each item whole (added, its parts or arguments, done), end."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert isinstance(events[0], ResponseCreatedEvent) and isinstance(events[1], ResponseInProgressEvent)
    assert isinstance(events[-1], ResponseCompletedEvent | ResponseIncompleteEvent)
    rest = iter(events[2:-1])
    for index, added in enumerate(rest):
        assert isinstance(added, ResponseOutputItemAddedEvent) and added.output_index == index
        if added.item.type == "message":
            expected_text = _check_message_events(rest, added.item.id)
        else:
            assert added.item.type == "function_call" and added.item.arguments == ""
            expected_text = _check_call_events(rest, added.item.id)
        done = next(rest)
        assert isinstance(done, ResponseOutputItemDoneEvent) and done.item.id == added.item.id
        final = events[-1].response.output[index]
        assert final.id == added.item.id
        assert (final.content[0].text if final.type == "message" else final.arguments) == expected_text


def _check_message_events(rest: Iterator[Any], item_id: str) -> str:
    part = next(rest)
    assert isinstance(part, ResponseContentPartAddedEvent) and part.item_id == item_id and part.part.text == ""
    text = ""
    event = next(rest)
    while isinstance(event, ResponseTextDeltaEvent):
        text += event.delta
        event = next(rest)
    assert isinstance(event, ResponseTextDoneEvent) and event.text == text
    part_done = next(rest)
    assert isinstance(part_done, ResponseContentPartDoneEvent) and part_done.part.text == text
    return text


def _check_call_events(rest: Iterator[Any], item_id: str) -> str:
    arguments = ""
    event = next(rest)
    while isinstance(event, ResponseFunctionCallArgumentsDeltaEvent):
        assert event.item_id == item_id
        arguments += event.delta
        event = next(rest)
    assert isinstance(event, ResponseFunctionCallArgumentsDoneEvent) and event.arguments == arguments
    return arguments


def test_a_response_not_streamed(agent_server: ServerProcess) -> None:
    result = respond(agent_server, "rs-plain", input="Name three colors.", max_output_tokens=16)
    assert (
        result.object == "response" and result.id.startswith("resp_") and result.status in ("completed", "incomplete")
    )
    (message,) = result.output
    assert message.type == "message" and message.role == "assistant" and result.output_text
    usage = result.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens == 0


def test_streamed_text_events_in_order_and_equal_to_the_plain_answer(agent_server: ServerProcess) -> None:
    ask = [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."}]
    plain = respond(agent_server, "rs-order-a", input=ask, max_output_tokens=12)
    events = list(respond(agent_server, "rs-order-b", input=ask, max_output_tokens=12, stream=True))
    check_event_order(events)
    final = events[-1].response
    assert final.output_text == plain.output_text and final.status == plain.status
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_a_streamed_function_call(agent_server: ServerProcess) -> None:
    ask = "What is the weather in Paris?"
    tools = [flat_tool("get_weather"), flat_tool("read_file")]
    stream = respond(
        agent_server, "rs-call", input=ask, tools=tools, tool_choice="required", parallel_tool_calls=False, stream=True
    )
    events = list(stream)
    check_event_order(events)
    assert isinstance(events[-1], ResponseCompletedEvent)
    (call,) = events[-1].response.output
    assert call.type == "function_call" and call.status == "completed" and call.call_id.startswith("call_")
    valid_arguments(call.name, call.arguments)


def test_a_codex_shaped_session_stays_warm(agent_server: ServerProcess) -> None:
    """Developer messages, 9 tools (one namespace, one web_search), store false, include, reasoning, streamed;
    the second request of the session (same prompt_cache_key) reuses most of its prompt."""
    key = str(uuid.uuid4())
    mark = agent_server.mark()
    first = codex_request(key)
    events = list(agent_server.client().responses.create(**first))
    check_event_order(events)
    done = events[-1].response
    assert done.usage.input_tokens > 700  # agent-sized: the tools and developer text are in the prompt
    second = list(agent_server.client().responses.create(**next_turn(first, done.output)))
    usage = second[-1].response.usage
    assert usage.input_tokens_details.cached_tokens >= 0.9 * usage.input_tokens, usage
    logs = agent_server.wait_logs(mark, 2, "/v1/responses")
    assert [line["routed_by"] for line in logs] == ["prompt_cache_key", "prompt_cache_key"]
    assert logs[0]["workspace"] == logs[1]["workspace"]
    assert logs[0]["ignored_tools"] == ["namespace:agents", "web_search"]
    with agent_server.http() as http:  # store false: nothing kept
        assert http.get(f"/v1/responses/{done.id}").status_code == 404


def test_store_and_previous_response_id_continue_in_the_workspace(agent_server: ServerProcess) -> None:
    tools = [flat_tool("get_weather")]
    mark = agent_server.mark()
    first = respond(
        agent_server, input="Weather in Rome?", tools=tools, tool_choice="required", parallel_tool_calls=False
    )
    (call,) = first.output
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees celsius, clear"}
    second = respond(agent_server, input=[result], previous_response_id=first.id, tools=tools, max_output_tokens=16)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    logs = agent_server.wait_logs(mark, 2, "/v1/responses")
    assert logs[1]["routed_by"] == "previous_response_id" and logs[1]["workspace"] == logs[0]["workspace"]
    assert logs[1]["prefilled_tokens"] == 0  # the call was re-prefilled after the first answer went out
    assert agent_server.client().responses.retrieve(second.id).output_text == second.output_text
    with agent_server.http() as http:
        body = {"model": ALIAS, "input": "Hi", "previous_response_id": "resp_unknown"}
        refused = http.post("/v1/responses", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "previous_response_not_found"
        assert http.get("/v1/responses/resp_unknown").json()["error"]["code"] == "response_not_found"


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "unsupported_feature", "item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "unsupported_feature", "input_image"),
        ({"truncation": "auto"}, "unsupported_feature", "truncation"),
        ({"conversation": "conv_1"}, "unknown_field", "conversation"),
        ({"tool_choice": "required"}, "invalid_value", "tool_choice"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "invalid_value", "input"),
    ],
)  # fmt: skip
def test_refused_requests_are_400_and_name_what(
    agent_server: ServerProcess, change: dict[str, Any], code: str, named: str
) -> None:
    with agent_server.http() as http:
        response = http.post("/v1/responses", json={"model": ALIAS, "input": "Hi"} | change)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == code and named in error["message"] + str(error["param"])


def test_reasoning_items_are_dropped_and_other_tools_ignored_with_a_log_note(agent_server: ServerProcess) -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi."}]},
    ]
    tools = [{"type": "web_search"}, {"type": "custom", "name": "apply_patch"}]
    mark = agent_server.mark()
    result = respond(agent_server, "rs-rules", input=items, tools=tools, max_output_tokens=4)
    assert result.status in ("completed", "incomplete")
    (line,) = agent_server.wait_logs(mark, 1, "/v1/responses")
    assert line["dropped_items"] == {"reasoning": 1} and line["ignored_tools"] == ["web_search", "custom:apply_patch"]


def test_text_format_json_schema_constrains_the_answer(agent_server: ServerProcess) -> None:
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    fmt = {"type": "json_schema", "name": "pick", "schema": schema}
    result = respond(agent_server, "rs-json", input="Pick a color.", text={"format": fmt}, max_output_tokens=40)
    assert result.status == "completed"
    jsonschema.validate(json.loads(result.output_text), schema)


# -- a small window: max_output_tokens is a cap, an oversized prompt still a 400 -------------------------


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    proc = start_server("--ctx", "256", "--alias", ALIAS)
    yield proc
    proc.stop()


def test_max_output_tokens_past_the_window_ends_incomplete_at_the_window(small_server: ServerProcess) -> None:
    mark = small_server.mark()
    result = respond(small_server, "rs-cap", input="Write a long essay about rivers.", max_output_tokens=100_000)
    assert result.status == "incomplete" and result.incomplete_details.reason == "max_output_tokens"
    assert result.usage.total_tokens == 256  # generated until the window was full
    (line,) = small_server.wait_logs(mark, 1, "/v1/responses")
    assert line["cut_by"] == "window"
    with small_server.http() as http:
        huge = http.post("/v1/responses", json={"model": ALIAS, "input": "word " * 400, "max_output_tokens": 10})
    error = huge.json()["error"]
    assert huge.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["num_ctx"] == 256 and error["requested_tokens"] > 256
    streamed = list(respond(small_server, input="word " * 400, stream=True))  # the stream had begun: an error event
    assert [e.type for e in streamed] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert streamed[2].code == "context_length_exceeded" and streamed[-1].response.status == "failed"
    assert streamed[-1].response.error.code == "context_length_exceeded"


# -- every emitted call parses and validates ---------------------------------------------------------------


def check_response_calls(server: ServerProcess, schema: dict[str, Any], temperature: float) -> None:
    """As the chat property, without a seed (the Responses API has none): temperature varies the samples."""
    tool = {"type": "function", "name": "act", "description": "Do it", "parameters": schema}
    body = {"model": ALIAS, "input": "Go.", "tools": [tool], "tool_choice": "required", "max_output_tokens": 120}
    body |= {"temperature": temperature, "store": False}
    with server.http() as http:
        answer = http.post("/v1/responses", json=body, headers={WORKSPACE: "rs-prop"}).json()
    if answer["status"] == "incomplete":
        return  # only a length cut may leave a call open
    assert answer["status"] == "completed", json.dumps(answer)
    calls = [item for item in answer["output"] if item["type"] == "function_call"]
    assert calls
    for call in calls:
        assert call["status"] == "completed"
        valid_arguments(call["name"], call["arguments"], {"act": schema})


@settings(max_examples=3)
@given(**CASES)
def test_every_responses_tool_call_parses_and_validates(
    agent_server: ServerProcess, schema: dict[str, Any], seed: int, temperature: float
) -> None:
    check_response_calls(agent_server, schema, temperature)


@pytest.mark.slow
@settings(max_examples=30)
@given(**CASES)
def test_every_responses_tool_call_parses_and_validates_many(
    agent_server: ServerProcess, schema: dict[str, Any], seed: int, temperature: float
) -> None:
    check_response_calls(agent_server, schema, temperature)
