"""The OpenAI-compatible routes through the official `openai` client against a real server."""

from __future__ import annotations

import json
import math

import pytest

from test_server_support import MODEL, ServerProcess, chat, conversation, locked_server, server

__all__ = ["locked_server", "server"]


def test_models_lists_the_served_model(server: ServerProcess) -> None:
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_not_streamed(server: ServerProcess) -> None:
    result = chat(server, [{"role": "user", "content": "What is 2+2?"}], workspace="oa-basic", max_tokens=12)
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert result.model == MODEL
    assert result.usage is not None
    assert result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens <= 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_streamed_equals_not_streamed_and_reports_usage(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Name three colors."}]
    plain = chat(server, messages, workspace="oa-stream-a", max_tokens=12)
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Llamanode-Workspace": "oa-stream-b"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_second_turn_is_warm_and_answers_like_a_cold_server(
    server: ServerProcess, locked_server: ServerProcess
) -> None:
    convo = conversation("median")
    mark = server.mark()
    warmed = server.warm_next_done()
    first = chat(server, convo[:2], workspace="oa-warm", max_tokens=24)
    server.wait_warm_next(warmed)  # the answer was prefilled in the background after the first response...
    turn2 = [*convo[:2], {"role": "assistant", "content": first.choices[0].message.content}, convo[3]]
    warm = chat(server, turn2, workspace="oa-warm", max_tokens=24)
    assert warm.usage.prompt_tokens_details.cached_tokens > 0  # type: ignore[union-attr]
    logs = server.wait_logs(mark, 2, "/v1/chat/completions")
    assert logs[0]["warm_next"] == "started"
    assert logs[1]["prefilled_tokens"] == 0  # ...so the whole second prefix (answer included) was warm
    cold = chat(locked_server, turn2, workspace="oa-warm-cold", max_tokens=24)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    assert warm.choices[0].message.content == cold.choices[0].message.content
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens  # type: ignore[union-attr]


def test_unlabelled_client_is_routed_to_its_warm_workspace(server: ServerProcess) -> None:
    """No header, no `user`: the longest shared token prefix picks the workspace."""
    convo = conversation("maximum")
    mark = server.mark()
    first = chat(server, convo[:2], max_tokens=16)
    turn2 = [*convo[:2], {"role": "assistant", "content": first.choices[0].message.content}, convo[3]]
    second = chat(server, turn2, max_tokens=16)
    assert second.usage.prompt_tokens_details.cached_tokens >= 32  # type: ignore[union-attr]
    logs = server.wait_logs(mark, 2, "/v1/chat/completions")
    assert logs[1]["routed_by"] in ("continues", "prefix")
    assert logs[1]["workspace"] == logs[0]["workspace"]


def test_user_field_routes_to_a_stable_workspace(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    mark = server.mark()
    chat(server, messages, max_tokens=4, user="alice@example.com")
    again = chat(server, messages, max_tokens=4, user="alice@example.com")
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # type: ignore[union-attr]
    logs = server.wait_logs(mark, 2, "/v1/chat/completions")
    assert logs[0]["workspace"] == logs[1]["workspace"]
    assert logs[1]["routed_by"] == "user" and "alice" not in logs[1]["workspace"]


def test_stop_strings_and_seed_are_honoured(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = chat(server, messages, workspace="oa-stop", max_tokens=40)
    text = full.choices[0].message.content
    assert "," in text
    cut = chat(server, messages, workspace="oa-stop", max_tokens=40, stop=[","])
    assert cut.choices[0].message.content == text.split(",")[0]
    assert cut.choices[0].finish_reason == "stop"
    a = server.client().chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0.9,
        seed=7,  # type: ignore[arg-type]
        extra_headers={"X-Llamanode-Workspace": "oa-seed"},
    )
    b = server.client().chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0.9,
        seed=7,  # type: ignore[arg-type]
        extra_headers={"X-Llamanode-Workspace": "oa-seed"},
    )
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "point",
                "schema": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                },
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
def test_response_format_constrains_output_to_json(server: ServerProcess, response_format: dict[str, object]) -> None:
    messages = [{"role": "user", "content": "Give me a point with x and y as JSON."}]
    result = chat(server, messages, workspace="oa-json", max_tokens=64, response_format=response_format)
    value = json.loads(result.choices[0].message.content)
    assert isinstance(value, dict)
    if response_format["type"] == "json_schema":
        assert set(value) == {"x", "y"} and all(isinstance(v, int) for v in value.values())


def test_completions_stream_and_not(server: ServerProcess) -> None:
    client = server.client()
    headers = {"X-Llamanode-Workspace": "oa-completions"}
    prompt = "def fibonacci(n):\n"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_headers=headers)
    assert plain.choices[0].text
    assert plain.usage is not None and plain.usage.completion_tokens == 12
    assert plain.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True, extra_headers=headers
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_headers=headers)
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # type: ignore[union-attr]


def test_embeddings_float_and_base64(server: ServerProcess) -> None:
    client = server.client()
    result = client.embeddings.create(model=MODEL, input=["hello world", "def add(a, b): return a + b"])
    assert [d.index for d in result.data] == [0, 1]
    vectors = [d.embedding for d in result.data]
    assert len(vectors[0]) == len(vectors[1]) > 0
    assert math.isclose(sum(v * v for v in vectors[0]), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


def test_embedding_an_input_without_tokens_is_400(server: ServerProcess) -> None:
    with server.http() as http:
        response = http.post("/v1/embeddings", json={"model": MODEL, "input": ["ok", "\x1d"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
