"""The Anthropic Messages API through the official `anthropic` client against a real server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from json_schemas import FORMAT_CHECKER
from test_server_support import API_KEY, MODEL, ServerProcess, locked_server, server, start_server

__all__ = ["locked_server", "server"]

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
# Anthropic's documented order of a streamed message (pings may come at any point before the end).
EVENT_ORDER = re.compile(
    r"(ping )*message_start (ping )*((content_block_start (content_block_delta )*content_block_stop )(ping )*)*"
    r"message_delta message_stop "
)


_CLIENTS: dict[tuple[str, str], anthropic.Anthropic] = {}


def client(server: ServerProcess, api_key: str = "unused") -> anthropic.Anthropic:
    """One client per server and key, closed when the module's tests are done."""
    key = (server.url, api_key)
    if key not in _CLIENTS:
        _CLIENTS[key] = anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0)
    return _CLIENTS[key]


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()


def ws(name: str) -> dict[str, str]:
    return {"X-Llamanode-Workspace": name}


def sse_events(server: ServerProcess, body: dict[str, Any], headers: dict[str, str]) -> list[tuple[str, Any]]:
    """(event, data) pairs of a streamed /v1/messages response, read without the SDK (which drops pings)."""
    events: list[tuple[str, Any]] = []
    name = ""
    with (
        server.http(timeout=600) as http,
        http.stream("POST", "/v1/messages?beta=true", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    assert all(data["type"] == event for event, data in events)
    return events


def total_prompt(usage: Any) -> int:
    return int(usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens)


def test_a_message_not_streamed_and_streamed(server: ServerProcess) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 12,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Name three colors."}],
    }
    plain = client(server).messages.create(**request, extra_headers=ws("an-basic"))
    assert (
        plain.type == "message" and plain.role == "assistant" and plain.model == MODEL and plain.id.startswith("msg_")
    )
    assert [b.type for b in plain.content] == ["text"] and plain.content[0].text  # type: ignore[union-attr]
    assert plain.stop_reason in ("end_turn", "max_tokens") and plain.stop_sequence is None
    assert 0 < plain.usage.output_tokens <= 12 and total_prompt(plain.usage) > 0
    with client(server).messages.stream(**request, extra_headers=ws("an-basic-stream")) as stream:
        streamed = stream.get_final_message()
    assert [(b.type, b.text) for b in streamed.content] == [("text", plain.content[0].text)]  # type: ignore[union-attr]
    assert streamed.stop_reason == plain.stop_reason
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert total_prompt(streamed.usage) == total_prompt(plain.usage)
    events = sse_events(server, {**request, "stream": True}, ws("an-basic-raw"))
    assert EVENT_ORDER.fullmatch("".join(f"{e} " for e, _ in events))
    assert "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta") == plain.content[0].text  # type: ignore[union-attr]


def test_stop_sequences_end_the_message_and_name_the_sequence(server: ServerProcess) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    }
    full = client(server).messages.create(**request, extra_headers=ws("an-stop"))
    text = full.content[0].text  # type: ignore[union-attr]
    assert "," in text
    cut = client(server).messages.create(**request, stop_sequences=["zzz", ","], extra_headers=ws("an-stop"))
    assert cut.content[0].text == text.split(",")[0]  # type: ignore[union-attr]
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", ",")


def test_a_tool_use_round_trip_reuses_the_prompt(server: ServerProcess) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    options: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "tools": [WEATHER], "extra_headers": ws("an-tools")}
    first = client(server).messages.create(
        messages=messages, tool_choice={"type": "any", "disable_parallel_tool_use": True}, **options
    )
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER["input_schema"])
    mark = server.mark()
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}
    messages += [{"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client(server).messages.create(messages=messages, **options)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # the answer was prefilled after the first response: everything before the tool result is warm
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 4 * second.usage.input_tokens
    (log,) = server.wait_logs(mark, 1, "/v1/messages")
    assert log["reused_tokens"] == second.usage.cache_read_input_tokens and "divergence" not in log  # no miss


# A tool shaped like Claude Code's Workflow tool (its id parameter has a pattern; this one is our own).
RESUME = {
    "name": "resume_job",
    "description": "Resume a paused job by its id.",
    "input_schema": {
        "type": "object",
        "properties": {
            "job_id": {"type": "string", "pattern": "^job_[a-z0-9-]{6,}$", "description": "e.g. job_7f3a-22"},
            "notify": {"type": "string", "format": "email"},
            "after": {"type": "string", "format": "date-time"},
        },
        "required": ["job_id"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_with_a_pattern_is_served_and_its_input_matches(server: ServerProcess, stream: bool) -> None:
    mark = server.mark()
    request: dict[str, Any] = {
        "model": MODEL, "max_tokens": 100, "tools": [RESUME],
        "tool_choice": {"type": "tool", "name": "resume_job", "disable_parallel_tool_use": True},
        "messages": [{"role": "user", "content": "Resume job job_7f3a-22 and tell ops@example.com when done."}],
        "extra_body": {"temperature": 0.0},
    }  # fmt: skip
    if stream:
        with client(server).messages.stream(**request, extra_headers=ws("an-pattern")) as events:
            message = events.get_final_message()
    else:
        message = client(server).messages.create(**request, extra_headers=ws("an-pattern"))
    (call,) = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "resume_job" and message.stop_reason == "tool_use"
    jsonschema.validate(call.input, RESUME["input_schema"], format_checker=FORMAT_CHECKER)
    assert re.fullmatch("job_[a-z0-9-]{6,}", call.input["job_id"])  # the model fills the required id
    (log,) = server.wait_logs(mark, 1, "/v1/messages")
    assert log["status"] == 200 and log["schema_annotations"] == ["resume_job: #/properties/notify: format 'email'"]


def test_count_tokens_counts_what_messages_renders(server: ServerProcess) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]}],
    }
    counted = client(server).messages.count_tokens(**request)
    made = client(server).messages.create(**request, max_tokens=4, extra_headers=ws("an-count"))
    assert counted.input_tokens == total_prompt(made.usage) > 100  # the tool block is rendered too


def test_a_session_in_metadata_user_id_routes_and_its_next_turn_is_warm(server: ServerProcess) -> None:
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "3f2a9c1e-routing"})
    messages: list[Any] = [{"role": "user", "content": "Write a haiku about caches."}]
    options: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 16,
        "system": "You are a poet.",
        "metadata": {"user_id": user_id},
    }
    mark = server.mark()
    first = client(server).messages.create(messages=messages, **options)
    messages += [{"role": "assistant", "content": first.content}, {"role": "user", "content": "Another one."}]
    second = client(server).messages.create(messages=messages, **options)
    assert second.usage.cache_read_input_tokens >= 0.7 * total_prompt(second.usage)
    assert second.usage.cache_creation_input_tokens == 0
    logs = server.wait_logs(mark, 2, "/v1/messages")
    assert [log["routed_by"] for log in logs] == ["metadata.user_id"] * 2
    assert logs[0]["workspace"] == logs[1]["workspace"] and logs[0]["workspace"].startswith("session-")
    assert "3f2a9c1e" not in logs[0]["workspace"]


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        ({"model": "claude-nope", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]},
         404, "not_found_error", "model 'claude-nope' is not served here"),
        ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image", "source": {"type": "url", "url": "x"}}]}]},
         400, "invalid_request_error", "messages.0.content.1: content blocks of type 'image' are not supported"),
        ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         400, "invalid_request_error", "tools.0: server tool 'web_search_20250305' (web_search) is not available"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
         400, "invalid_request_error", "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}], "temperatur": 1},
         400, "invalid_request_error", "unknown field 'temperatur'"),
        ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}],
          "tool_choice": {"type": "any"}},
         400, "invalid_request_error", "tool_choice 'required' needs at least one tool"),
    ],
)  # fmt: skip
def test_errors_have_anthropics_shape(
    server: ServerProcess, body: dict[str, Any], status: int, kind: str, message: str
) -> None:
    with server.http() as http:
        response = http.post("/v1/messages", json=body)
    assert response.status_code == status
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == kind
    assert payload["error"]["message"].startswith(message) or message in payload["error"]["message"]


def test_the_sdk_raises_its_typed_errors(server: ServerProcess, locked_server: ServerProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(server).messages.create(model="claude-x", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    with pytest.raises(anthropic.BadRequestError, match="image"):
        client(server).messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client(locked_server, "wrong-key").messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert denied.value.status_code == 401 and denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    counted = client(locked_server, API_KEY).messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    assert counted.input_tokens > 0  # x-api-key accepted


@pytest.fixture(scope="module")
def small_window() -> Iterator[ServerProcess]:
    proc = start_server("--ctx", "256", "--parallel", "1")
    yield proc
    proc.stop()


def test_max_tokens_is_a_cap_and_a_full_window_is_reported(small_window: ServerProcess) -> None:
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 32000, "messages": [
        {"role": "user", "content": "Count from 1 to 1000, separated by commas."}]}  # fmt: skip
    with client(small_window).messages.stream(**request) as stream:  # the SDK streams a max_tokens this large
        message = stream.get_final_message()
    assert message.stop_reason == "model_context_window_exceeded"
    assert total_prompt(message.usage) + message.usage.output_tokens == 256
    too_long = {**request, "messages": [{"role": "user", "content": "word " * 400}]}
    with small_window.http() as http:
        response = http.post("/v1/messages", json=too_long)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "num_ctx 256" in response.json()["error"]["message"]


# -- tool inputs always validate -----------------------------------------------------------------
_LEAF = st.sampled_from(
    [{"type": "string"}, {"type": "integer", "minimum": 0, "maximum": 99}, {"type": "number"}, {"type": "boolean"},
     {"enum": ["low", "high", 3]}, {"type": "array", "items": {"type": "string"}, "maxItems": 3}]
)  # fmt: skip


@st.composite
def _input_schema(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(st.sampled_from(["path", "count", "flag", "mode", "items"]), _LEAF, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
    closed = draw(st.booleans())
    return {"type": "object", "properties": props, "required": required} | (
        {"additionalProperties": False} if closed else {}
    )


def _check_tool_inputs(server: ServerProcess, schema: dict[str, Any], temperature: float, stream: bool) -> None:
    tool = {"name": "act", "description": "Do the task.", "input_schema": schema}
    request: dict[str, Any] = {
        "model": MODEL, "max_tokens": 120, "tools": [tool], "tool_choice": {"type": "tool", "name": "act"},
        "messages": [{"role": "user", "content": "Do it."}],
        "extra_body": {"temperature": temperature},  # this SDK no longer has sampling parameters; servers do
    }  # fmt: skip
    if stream:
        with client(server).messages.stream(**request, extra_headers=ws("an-property")) as events:
            message = events.get_final_message()
    else:
        message = client(server).messages.create(**request, extra_headers=ws("an-property"))
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls and all(c.name == "act" for c in calls)
    complete = calls if message.stop_reason == "tool_use" else calls[:-1]  # only a length cut leaves one open
    assert message.stop_reason in ("tool_use", "max_tokens")
    for call in complete:
        jsonschema.validate(call.input, schema)


_CASES = {"schema": _input_schema(), "temperature": st.sampled_from([0.0, 0.7, 1.0]), "stream": st.booleans()}


@settings(max_examples=5)
@given(**_CASES)
def test_every_tool_use_input_validates_against_its_schema(
    server: ServerProcess, schema: dict[str, Any], temperature: float, stream: bool
) -> None:
    _check_tool_inputs(server, schema, temperature, stream)


@pytest.mark.slow
@settings(max_examples=60)
@given(**_CASES)
def test_every_tool_use_input_validates_against_its_schema_many(
    server: ServerProcess, schema: dict[str, Any], temperature: float, stream: bool
) -> None:
    _check_tool_inputs(server, schema, temperature, stream)


def test_a_streamed_error_after_the_headers_is_an_error_event(small_window: ServerProcess) -> None:
    body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "word " * 400}]}
    events = sse_events(small_window, body, {})
    assert [e for e, _ in events if e != "ping"] == ["error"]
    assert (
        events[-1][1]["error"]["type"] == "invalid_request_error" and "num_ctx 256" in events[-1][1]["error"]["message"]
    )
    request = {k: v for k, v in body.items() if k != "stream"}
    with (  # the SDK raises the error event as it would raise the status (the stream's own status is 200)
        pytest.raises(anthropic.APIStatusError, match="num_ctx 256") as caught,
        client(small_window).messages.stream(**request) as s,
    ):
        s.get_final_message()
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
