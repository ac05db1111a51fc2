"""The native session routes (/v1/llamanode/sessions/...), operations routes and the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from test_server_support import MODEL, ServerProcess, server

__all__ = ["server"]

BASE = "/v1/llamanode/sessions"
SEGMENTS = [
    {"name": "system", "text": "<|im_start|>system\nYou are a careful coding assistant.<|im_end|>\n"},
    {"name": "file", "text": "<|im_start|>user\nFile add.py:\ndef add(a, b):\n    return a + b\n"},
]
SUFFIX = "What does add do?<|im_end|>\n<|im_start|>assistant\n"


def _sse(text: str) -> list[Any]:
    return [
        json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


def test_session_lifecycle_prefix_suffix_decode_context_fork_delete(server: ServerProcess) -> None:
    with server.http() as http:
        created = http.post(BASE, json={"id": "native-a"})
        assert created.status_code == 201, created.text
        assert http.post(BASE, json={"id": "native-a"}).status_code == 409
        assert any(s["id"] == "native-a" for s in http.get(BASE).json()["data"])

        cold = http.post(f"{BASE}/native-a/prefix", json={"segments": SEGMENTS}).json()
        assert cold["reused_tokens"] == 0 and cold["prefilled_tokens"] > 0
        warm = http.post(f"{BASE}/native-a/prefix", json={"segments": SEGMENTS}).json()
        assert warm["byte_hash_hit"] and warm["reused_tokens"] == cold["prefix_tokens"]
        suffix = http.post(f"{BASE}/native-a/suffix", json={"text": SUFFIX}).json()
        assert suffix["suffix_tokens"] > 0

        decoded = http.post(f"{BASE}/native-a/decode", json={"max_tokens": 8}).json()
        assert decoded["finish_reason"] in ("stop", "length") and decoded["report"]["generated_tokens"] <= 8

        context = http.get(f"{BASE}/native-a/context").json()
        assert [s["name"] for s in context["segments"]] == ["system", "file"]
        assert context["prefix_tokens"] == cold["prefix_tokens"]
        assert context["manifest"]["digest"] == cold["manifest_digest"]

        forked = http.post(f"{BASE}/native-a/fork", json={"dst": "native-b"})
        assert forked.status_code == 201, forked.text
        again = http.post(f"{BASE}/native-b/prefix", json={"segments": SEGMENTS}).json()
        assert again["reused_tokens"] == cold["prefix_tokens"]  # the fork carries the warm prefix

        http.post(f"{BASE}/native-b/suffix", json={"text": SUFFIX})
        streamed = _sse(http.post(f"{BASE}/native-b/decode", json={"max_tokens": 8, "stream": True}).text)
        assert streamed[-1] == "[DONE]"
        assert "".join(e["text"] for e in streamed[:-1]) == decoded["text"]
        assert streamed[-2]["finish_reason"] == decoded["finish_reason"]

        assert http.post(f"{BASE}/native-a/snapshot").status_code == 200
        assert http.delete(f"{BASE}/native-b").json()["deleted"] is True
        assert http.get(f"{BASE}/native-b").status_code == 404


def test_native_errors_map_to_status_codes(server: ServerProcess) -> None:
    with server.http() as http:
        assert http.post(f"{BASE}/native-missing/prefix", json={"segments": SEGMENTS}).status_code == 404
        assert http.post(BASE, json={"id": "../escape"}).status_code == 400
        http.post(BASE, json={"id": "native-e"})
        suffix_first = http.post(f"{BASE}/native-e/suffix", json={"text": "x"})
        assert suffix_first.status_code == 409 and suffix_first.json()["error"]["code"] == "manifest_mismatch"
        nothing = http.post(f"{BASE}/native-e/decode", json={"max_tokens": 4})
        assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "invalid_input"
        bad_option = http.post(f"{BASE}/native-e/decode", json={"max_tokens": 4, "warmth": 3})
        assert bad_option.status_code == 400 and bad_option.json()["error"]["code"] == "unknown_field"
        overflow = http.post(f"{BASE}/native-e/prefix", json={"segments": [{"name": "all", "text": "word " * 2100}]})
        assert overflow.status_code == 400 and overflow.json()["error"]["code"] == "context_length_exceeded"


def test_health_metrics_and_openapi(server: ServerProcess) -> None:
    with server.http() as http:
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["model"] == MODEL
        http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"X-Llamanode-Workspace": "metrics-ws"},
        )
        text = http.get("/metrics").text
        for name in (
            "llamanode_prompt_tokens_reused_total",
            "llamanode_prompt_tokens_prefilled_total",
            "llamanode_ttft_seconds_bucket",
            "llamanode_decode_tokens_per_second_count",
            'llamanode_workspaces{state="live"}',
            'llamanode_workspaces{state="evicted"}',
            "llamanode_queue_depth",
            "llamanode_requests_total",
            "llamanode_pool_kept_states",
            "llamanode_pool_writes_cancelled",
        ):
            assert name in text, name
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health"} <= set(
            spec["paths"]
        )
        chat_schema = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
        assert chat_schema["schema"]["$ref"].endswith("ChatCompletionRequest")
        assert spec["components"]["schemas"]["ChatCompletionRequest"]["additionalProperties"] is False


def test_one_json_log_line_per_request(server: ServerProcess) -> None:
    mark = server.mark()
    with server.http() as http:
        http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"X-Llamanode-Workspace": "log-ws"},
        )
    (line,) = server.wait_logs(mark, 1, "/v1/chat/completions")
    assert line["workspace"] == "log-ws" and line["status"] == 200
    for key in ("ts", "ms", "reused_tokens", "prefilled_tokens", "suffix_tokens", "generated_tokens", "ttft_ms"):
        assert key in line, key


def test_prefix_with_wait_false_prewarms_and_the_next_prefix_joins_it(server: ServerProcess) -> None:
    long_file = {"name": "long", "text": "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(120))}
    segments = [*SEGMENTS, long_file]
    with server.http() as http:
        http.post(BASE, json={"id": "native-pw"})
        started = http.post(f"{BASE}/native-pw/prefix", params={"wait": "false"}, json={"segments": segments})
        assert started.status_code == 202, started.text
        assert started.json()["outcome"] in ("running", "completed")
        status = http.post(f"{BASE}/native-pw/prefix", json={"segments": segments}).json()
        context = http.get(f"{BASE}/native-pw/context").json()
        prewarm = context["last_prewarm"]
        assert prewarm["outcome"] in ("joined", "completed")
        # whatever the prewarm prefilled, the foreground call did not prefill again
        assert status["prefilled_tokens"] + prewarm["prefilled_tokens"] == status["prefix_tokens"]
        assert context["prefix_tokens"] == status["prefix_tokens"]
