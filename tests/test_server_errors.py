"""Bad inputs, limits, overflow, auth, CORS: the right status and OpenAI error shape, and no workspace changes."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from test_server_support import ALLOWED_ORIGIN, API_KEY, MODEL, ServerProcess, chat, locked_server, server

__all__ = ["locked_server", "server"]

WS = "err-probe"


def _chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4, **extra}


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def _context(server: ServerProcess, workspace: str) -> dict[str, Any]:
    with server.http() as http:
        response = http.get(f"/v1/llamanode/sessions/{workspace}/context")
    assert response.status_code == 200, response.text
    return dict(response.json())


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed json", b'{"model": "x", "messages": [', "invalid_json"),
    ("not an object", b"[1, 2, 3]", "invalid_json"),
    ("empty body", b"", "invalid_json"),
    ("invalid utf-8", b'{"model": "\xff\xfe", "messages": []}', "invalid_utf8"),
    ("lone surrogate", b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
    ("nan", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("name", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_malformed_bodies_answer_400_and_leave_the_workspace_alone(
    server: ServerProcess, name: str, body: bytes, code: str | None
) -> None:
    chat(server, [{"role": "user", "content": "Say yes."}], workspace=WS, max_tokens=4)
    server.settle_warm_next()  # the answer, prefilled for the next turn in the background
    before = _context(server, WS)
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "X-Llamanode-Workspace": WS},
        )
    _error(response, 400, code)
    assert _context(server, WS) == before


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", _chat_body(frobnicate=1), "unknown_field"),
    ("unknown nested field", _chat_body(messages=[{"role": "user", "content": "x", "mood": "happy"}]), "unknown_field"),
    ("tool without its function", _chat_body(tools=[{"type": "function"}]), "invalid_value"),
    ("bad role", _chat_body(messages=[{"role": "wizard", "content": "x"}]), "invalid_value"),
    ("empty messages", _chat_body(messages=[]), "invalid_value"),
    ("wrong type", _chat_body(max_tokens="many"), "invalid_value"),
    ("negative max_tokens", _chat_body(max_tokens=0), "invalid_value"),
    ("temperature range", _chat_body(temperature=7), "invalid_value"),
    ("n > 1", _chat_body(n=2), "invalid_value"),
    ("presence penalty", _chat_body(presence_penalty=0.5), "unsupported_feature"),
    ("logprobs", _chat_body(logprobs=True), "unsupported_feature"),
    ("bad response_format", _chat_body(response_format={"type": "yaml"}), "invalid_value"),
    (
        "bad json schema",
        _chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}),
        "invalid_grammar",
    ),
    ("bad workspace header", _chat_body(), "invalid_workspace"),
]


@pytest.mark.parametrize(("name", "body", "code"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_invalid_requests_answer_400_and_leave_the_workspace_alone(
    server: ServerProcess, name: str, body: dict[str, Any], code: str
) -> None:
    chat(server, [{"role": "user", "content": "Say yes."}], workspace=WS, max_tokens=4)
    server.settle_warm_next()  # the answer, prefilled for the next turn in the background
    before = _context(server, WS)
    header = "../../etc/passwd" if name == "bad workspace header" else WS
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body, headers={"X-Llamanode-Workspace": header})
    _error(response, 400, code)
    assert _context(server, WS) == before


def test_bad_gbnf_grammar_on_the_native_route_is_400(server: ServerProcess) -> None:
    with server.http() as http:
        assert http.post("/v1/llamanode/sessions", json={"id": "err-grammar"}).status_code in (201, 409)
        http.post("/v1/llamanode/sessions/err-grammar/prefix", json={"segments": [{"name": "a", "text": "Hello"}]})
        before = _context(server, "err-grammar")
        response = http.post("/v1/llamanode/sessions/err-grammar/decode", json={"grammar": "root ::= ( unclosed"})
        _error(response, 400, "invalid_grammar")
        assert _context(server, "err-grammar") == before


def test_unknown_model_is_404_not_a_fallback(server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"


def test_unknown_route_and_wrong_method(server: ServerProcess) -> None:
    with server.http() as http:
        _error(http.get("/v1/nothing"), 404, "not_found")
        response = http.get("/v1/chat/completions")
        _error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"


def test_context_overflow_is_400_with_token_counts(server: ServerProcess) -> None:
    huge = "word " * 3000  # ~3000 tokens > num_ctx 2048
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json=_chat_body(messages=[{"role": "user", "content": huge}]),
            headers={"X-Llamanode-Workspace": "err-overflow"},
        )
        error = _error(response, 400, "context_length_exceeded")
        assert error["num_ctx"] == 2048 and error["requested_tokens"] > 2048
        assert str(error["requested_tokens"]) in error["message"]
        response = http.post(
            "/v1/chat/completions", json=_chat_body(max_tokens=4000), headers={"X-Llamanode-Workspace": "err-overflow"}
        )
        error = _error(response, 400, "context_length_exceeded")
        assert error["stage"] == "decode" and error["requested_tokens"] > 4000
        ok = http.post("/v1/chat/completions", json=_chat_body(), headers={"X-Llamanode-Workspace": "err-overflow"})
        assert ok.status_code == 200  # the workspace stays usable


def test_api_key_required_everywhere_but_health(locked_server: ServerProcess) -> None:
    with httpx.Client(base_url=locked_server.url) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/openapi.json")):
            _error(anonymous.request(method, path), 401, "invalid_api_key")
        wrong = anonymous.post("/v1/chat/completions", json=_chat_body(), headers={"Authorization": "Bearer nope"})
        _error(wrong, 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked_server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert locked_server.client().models.list().data[0].id == MODEL
    assert API_KEY not in "".join(locked_server.raw_stderr)


def test_api_key_off_means_open(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/v1/models").status_code == 200


def test_body_and_prompt_limits_answer_413(locked_server: ServerProcess) -> None:
    with locked_server.http() as http:
        big_body = _chat_body(messages=[{"role": "user", "content": "x" * (70 * 1024)}])
        _error(http.post("/v1/chat/completions", json=big_body), 413, "body_too_large")
        long_prompt = _chat_body(messages=[{"role": "user", "content": "y" * (20 * 1024)}])
        _error(http.post("/v1/chat/completions", json=long_prompt), 413, "prompt_too_large")
        assert http.get("/health").status_code == 200


def test_full_queue_answers_429_with_retry_after(locked_server: ServerProcess) -> None:
    """parallel 1, queue 1: one running, one queued, the third is refused at once."""
    body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 300, "temperature": 0, "stream": True}
    started = threading.Event()
    done = threading.Event()
    results: list[int] = []

    def hold(workspace: str) -> None:
        with (
            locked_server.http() as http,
            http.stream("POST", "/v1/completions", json=body, headers={"X-Llamanode-Workspace": workspace}) as response,
        ):
            results.append(response.status_code)
            for _ in response.iter_lines():
                started.set()
                if done.is_set():
                    break  # hang up: the server cancels the rest

    runner = threading.Thread(target=hold, args=("q-a",))
    runner.start()
    assert started.wait(60)
    queued = threading.Thread(target=hold, args=("q-b",))
    queued.start()
    time.sleep(0.5)
    with locked_server.http() as http:
        refused = http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
    error = _error(refused, 429, "queue_full")
    assert refused.headers["retry-after"].isdigit()
    assert error["type"] == "rate_limit_error"
    done.set()
    runner.join(120)
    queued.join(120)
    assert results == [200, 200]
    assert any(k.startswith("llamanode_refusals_total") for k in locked_server.metrics())


def test_cors_is_off_unless_named(server: ServerProcess) -> None:
    with server.http() as http:
        response = http.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
        preflight = http.options("/v1/chat/completions", headers={"Origin": "https://evil.example"})
        assert preflight.status_code == 403


def test_foreign_host_header_is_refused(server: ServerProcess) -> None:
    with server.http() as http:
        _error(http.get("/v1/models", headers={"Host": "attacker.example"}), 403, "invalid_host")


def test_cors_for_a_named_origin(locked_server: ServerProcess) -> None:
    with locked_server.http() as http:
        preflight = http.options(
            "/v1/chat/completions",
            headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        response = http.get("/v1/models", headers={"Origin": ALLOWED_ORIGIN})
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        other = http.get("/v1/models", headers={"Origin": "http://localhost:9999"})
        assert "access-control-allow-origin" not in other.headers


def test_session_ids_in_paths_are_validated(server: ServerProcess) -> None:
    with server.http() as http:
        _error(http.get("/v1/llamanode/sessions/..%2F..%2Fetc"), 400, "invalid_workspace")
