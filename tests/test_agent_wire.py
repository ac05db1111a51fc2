"""The agent harness's wire helpers and recording proxy (bench/agent_wire.py, bench/agent_proxy.py).

Fast: the proxy runs in process over an httpx mock upstream that answers like llama-server does. The real
agents against real servers are in tests/test_agents_e2e.py (slow).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from bench.agent_proxy import Harness, Recorder, apply_harness, make_app
from bench.agent_wire import (
    ReplyObserver,
    SSEParser,
    api_of,
    public_headers,
    read_recording,
    session_key,
    tool_results_in,
)


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


ANTHROPIC_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"usage": {"cache_read_input_tokens": 900,
                                                                       "input_tokens": 100, "output_tokens": 0}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
    ("message_stop", {"type": "message_stop"}),
)  # fmt: skip
RESPONSES_STREAM = sse(
    ("response.created", {"type": "response.created", "response": {"status": "in_progress", "output": []}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
    ("response.completed", {"type": "response.completed", "response": {
        "status": "completed", "output": [{"type": "function_call", "name": "shell", "arguments": "{}"}],
        "usage": {"input_tokens": 500, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 480}}},
        "timings": {"cache_n": 480, "prompt_n": 20}}),
)  # fmt: skip
CHAT_STREAM_WITHOUT_USAGE = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"timings":{"cache_n":30,"prompt_n":2}}\n\n'
    b"data: [DONE]\n\n"
)


def observe(api: str, payload: bytes, streaming: bool = True, chunk: int = 7) -> Any:
    observer = ReplyObserver(api, streaming)  # type: ignore[arg-type]
    for i in range(0, len(payload), chunk):  # split mid-line: the parser must carry partial lines over
        observer.feed(payload[i : i + chunk], at_s=float(i))
    return observer.finish(at_s=1e9)


def test_sse_parser_splits_events_across_chunks_and_crlf() -> None:
    parser = SSEParser()
    got = parser.feed(b"event: a\r\ndata: 1\r\n\r\n: comment\n\nda") + parser.feed(b"ta: 2\ndata: 3\n")
    assert got == [("a", "1")]
    assert parser.close() == [("message", "2\n3")]


def test_anthropic_usage_counts_cached_plus_uncached_as_the_prompt() -> None:
    reply = observe("anthropic", ANTHROPIC_STREAM)
    assert (reply.prompt_tokens, reply.cached_tokens, reply.output_tokens) == (1000, 900, 7)
    assert reply.reuse == 0.9
    assert reply.tool_calls == ["Bash"]
    assert reply.stop_reason == "tool_use" and reply.finished
    assert not observe("anthropic", ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_stop")]).finished
    first_content = ANTHROPIC_STREAM.index(b"content_block_start")
    assert reply.first_content_s is not None and reply.first_content_s >= first_content - 7


def test_responses_usage_and_llama_server_timings() -> None:
    reply = observe("responses", RESPONSES_STREAM)
    assert (reply.prompt_tokens, reply.cached_tokens, reply.usage_source) == (500, 480, "usage")
    assert (reply.timings_prompt_n, reply.timings_cache_n) == (20, 480)
    assert reply.tool_calls == ["shell"] and reply.finished
    assert reply.first_content_s is not None and reply.first_content_s < RESPONSES_STREAM.index(b"completed")


def test_chat_stream_without_usage_falls_back_to_timings() -> None:
    reply = observe("chat", CHAT_STREAM_WITHOUT_USAGE)
    assert (reply.prompt_tokens, reply.cached_tokens, reply.usage_source) == (32, 30, "timings")
    assert reply.stop_reason == "length" and reply.finished
    assert reply.first_content_s is not None and reply.first_content_s > CHAT_STREAM_WITHOUT_USAGE.index(b"null")


def test_an_empty_answer_has_its_first_token_time_at_its_end() -> None:
    empty = b"".join(
        f"event: {kind}\ndata: {json.dumps({'type': kind, **extra})}\n\n".encode()
        for kind, extra in [
            ("message_start", {"message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 0}}}),
            ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 0}}),
            ("message_stop", {}),
        ]
    )
    reply = observe("anthropic", empty)
    assert reply.finished and reply.first_content_s == 1e9  # the observer's finish time
    cut = observe("anthropic", empty[: empty.index(b"event: message_stop")])
    assert not cut.finished and cut.first_content_s is None


def test_a_json_error_body_is_an_error_without_content() -> None:
    reply = observe("anthropic", b'{"type":"error","error":{"type":"invalid_request_error","message":"no"}}', False)
    assert reply.error is not None and "invalid_request_error" in reply.error
    assert reply.first_content_s is None


def test_session_keys_per_agent() -> None:
    claude = {"metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "S1"})}}
    assert session_key("anthropic", {}, claude) == "S1"
    assert session_key("anthropic", {}, {"metadata": {"user_id": "user_ab_account__session_" + "1" * 36}}) == "1" * 36
    assert session_key("anthropic", {"x-claude-code-session-id": "H"}, {}) == "H"
    assert session_key("responses", {"session-id": "H"}, {"prompt_cache_key": "K"}) == "K"
    assert session_key("responses", {"session-id": "H"}, {}) == "H"
    assert session_key("chat", {}, {"messages": []}) is None
    assert api_of("/v1/messages?beta=true") == "anthropic"
    assert api_of("/v1/messages/count_tokens") == "other"


def test_harness_caps_output_and_forces_a_tool_only_when_asked() -> None:
    body = {"max_tokens": 32000, "thinking": {"type": "enabled"}, "tools": [{"name": "Bash"}], "messages": []}
    same, changes = apply_harness("anthropic", body, True, Harness())
    assert same == body and changes == []
    edited, changes = apply_harness("anthropic", body, True, Harness(max_output_tokens=64, force_tool_first=True))
    assert edited["max_tokens"] == 64 and edited["tool_choice"] == {"type": "any"} and "thinking" not in edited
    assert body["max_tokens"] == 32000 and "thinking" in body  # the original is not touched
    assert len(changes) == 3
    later, _ = apply_harness("anthropic", body, False, Harness(max_output_tokens=64, force_tool_first=True))
    assert "tool_choice" not in later
    small, changes = apply_harness("chat", {"max_tokens": 10}, False, Harness(max_output_tokens=64))
    assert small == {"max_tokens": 10} and changes == []
    codex, _ = apply_harness("responses", {"tools": [{}]}, True, Harness(max_output_tokens=64, force_tool_first=True))
    assert codex == {"tools": [{}], "max_output_tokens": 64, "tool_choice": "required"}
    aider = {"stream": True, "messages": []}
    assert apply_harness("chat", aider, False, Harness())[0] == aider
    asked, changes = apply_harness("chat", aider, False, Harness(stream_usage=True))
    assert asked["stream_options"] == {"include_usage": True} and changes == ["stream_options.include_usage -> true"]


def test_tool_results_count_what_the_agent_executed() -> None:
    anthropic = {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}
    responses = {"input": [{"type": "function_call"}, {"type": "function_call_output", "output": "ok"}]}
    chat = {"messages": [{"role": "assistant"}, {"role": "tool", "content": "ok"}]}
    assert [tool_results_in("anthropic", anthropic), tool_results_in("responses", responses)] == [1, 1]
    assert tool_results_in("chat", chat) == 1
    assert tool_results_in("anthropic", {"messages": [{"role": "user", "content": "plain"}]}) == 0


def test_public_headers_drop_every_credential() -> None:
    headers = [("Authorization", "Bearer s"), ("X-Api-Key", "s"), ("Cookie", "s"), ("Anthropic-Version", "v")]
    assert public_headers(headers) == {"anthropic-version": "v"}


# -- the proxy, in process, over a mock upstream ---------------------------------------------------


def _upstream(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/messages":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=ANTHROPIC_STREAM)
        return httpx.Response(404, json={"error": {"message": "not found"}})

    return httpx.MockTransport(answer)


def _through_proxy(tmp_path: Path, harness: Harness, requests: list[tuple[str, str, dict[str, Any] | None]]) -> tuple[
    list[httpx.Response], list[httpx.Request], list[dict[str, Any]]
]:  # fmt: skip
    seen: list[httpx.Request] = []
    recording = tmp_path / "rec.jsonl"
    app = make_app("http://upstream", Recorder(recording, "t", harness), transport=_upstream(seen))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            headers = {"x-api-key": "secret", "authorization": "Bearer secret", "anthropic-version": "2023-06-01"}
            return [await client.request(m, p, json=b, headers=headers) for m, p, b in requests]

    responses = asyncio.run(run())
    return responses, seen, read_recording(recording) if recording.exists() else []


def test_proxy_streams_unchanged_and_records_without_credentials(tmp_path: Path) -> None:
    body = {"model": "m", "max_tokens": 32000, "stream": True, "tools": [{"name": "Bash"}], "messages": [],
            "metadata": {"user_id": json.dumps({"session_id": "S"})}}  # fmt: skip
    responses, seen, records = _through_proxy(
        tmp_path,
        Harness(max_output_tokens=128, force_tool_first=True),
        [("POST", "/v1/messages?beta=true", body), ("POST", "/v1/messages?beta=true", body), ("HEAD", "/", None)],
    )
    assert [r.status_code for r in responses] == [200, 200, 404]
    assert responses[0].content == ANTHROPIC_STREAM
    assert seen[0].url.query == b"beta=true" and seen[0].headers["x-api-key"] == "secret"  # forwarded as sent
    forwarded = [json.loads(r.content) for r in seen[:2]]
    assert forwarded[0]["tool_choice"] == {"type": "any"} and "tool_choice" not in forwarded[1]
    assert [f["max_tokens"] for f in forwarded] == [128, 128]
    assert [r["seq"] for r in records] == [0, 1, 2]
    first = records[0]
    assert "x-api-key" not in first["headers"] and "authorization" not in first["headers"]
    assert "secret" not in json.dumps(records)
    assert first["session"] == "S" and first["api"] == "anthropic" and first["path"] == "/v1/messages?beta=true"
    assert first["body"] == forwarded[0] and len(first["harness"]) == 2
    assert first["reply"]["prompt_tokens"] == 1000 and first["reply"]["cached_tokens"] == 900
    assert first["reply"]["tool_calls"] == ["Bash"] and first["outcome"] == "complete"
    assert first["status"] == 200 and first["first_content_s"] is not None
    assert records[2]["method"] == "HEAD" and records[2]["status"] == 404


def test_proxy_records_an_unreachable_upstream_as_502(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    app = make_app("http://upstream", Recorder(recording, "t", Harness()), transport=httpx.MockTransport(refuse))

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
            return await client.post("/v1/responses", json={"input": []})

    assert asyncio.run(run()).status_code == 502
    (record,) = read_recording(recording)
    assert record["status"] == 502 and "refused" in record["outcome"]


def test_proxy_health_is_its_own(tmp_path: Path) -> None:
    responses, seen, records = _through_proxy(tmp_path, Harness(), [("GET", "/_proxy/health", None)])
    assert responses[0].status_code == 200 and seen == [] and records == []
