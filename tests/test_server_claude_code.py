"""A request shaped like Claude Code's (the text here is this test's own): three system blocks led by the
per-session billing line, cache_control breakpoints, tools, metadata.user_id as a JSON string, thinking,
context_management, max_tokens 32000, streamed to /v1/messages?beta=true. The next session, which differs
in its billing suffix and session id, shares the whole opening (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from test_server_anthropic import EVENT_ORDER, sse_events, total_prompt
from test_server_support import MODEL, ServerProcess, server, start_server

__all__ = ["server"]

RULES = "\n".join(
    f"{i}. {rule}"
    for i, rule in enumerate(
        [
            "Read the files you change before you change them, and keep each edit as small as the task allows.",
            "Explain every edit in one sentence: what changed and why it was needed.",
            "Run the tests after each change and report the command you ran and what it printed.",
            "Never touch files outside the repository, never delete files you did not create.",
            "When a command fails, read its output before you try anything else.",
            "Prefer the standard library; add a dependency only when the task cannot be done without one.",
        ]
        * 4,
        start=1,
    )
)
TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a file of the repository and return its text with line numbers.",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path relative to the repository root"},
                "offset": {"type": "integer", "minimum": 0, "description": "First line to read"},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "run_command",
        "description": "Run a shell command in the repository and return what it printed.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "edit_file",
        "description": "Replace one exact piece of a file's text with another.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "old": {"type": "string"}, "new": {"type": "string"}},
            "required": ["path", "old", "new"],
            "additionalProperties": False,
        },
    },
]
TOOLS.append(  # like Claude Code's Workflow tool, whose id parameter has a pattern (this one is our own)
    {
        "name": "workflow_status",
        "description": "Report the status of a running workflow.",
        "input_schema": {
            "type": "object",
            "properties": {
                "workflow_id": {"type": "string", "pattern": "^wfl_[a-z0-9]{8,}$"},
                "since": {"type": "string", "format": "date-time"},
            },
            "required": ["workflow_id"],
            "additionalProperties": False,
        },
    }
)
BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]


def claude_code_request(version: str, session: str) -> dict[str, Any]:
    ephemeral = {"type": "ephemeral"}
    billing = f"x-anthropic-billing-header: cc_version=2.1.332.{version}; cc_entrypoint=sdk-cli;"
    reminder = "<system-reminder>The repository holds calc.py and test_calc.py.</system-reminder>"
    return {
        "model": MODEL,
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": billing},
            {"type": "text", "text": "You are a coding agent in a Python repository.", "cache_control": ephemeral},
            {"type": "text", "text": f"Follow these rules.\n{RULES}", "cache_control": ephemeral},
        ],
        "tools": TOOLS,
        "metadata": {"user_id": json.dumps({"device_id": "7" * 64, "account_uuid": "", "session_id": session})},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": reminder},
                    {"type": "text", "text": "Reply with one word: ready.", "cache_control": ephemeral},
                ],
            }
        ],
    }  # fmt: skip


CLAUDE_CODE_HEADERS = {"x-api-key": "dummy", "anthropic-version": "2023-06-01", "anthropic-beta": ",".join(BETAS)}


def test_a_claude_code_request_streams_and_the_next_session_shares_its_opening(server: ServerProcess) -> None:
    workspace = {"X-Llamanode-Workspace": "cc-sessions"}  # both sessions in one workspace: only the text decides
    mark = server.mark()
    body = claude_code_request("0b8", "5b0c7e0a-first") | {"stream": True}
    events = sse_events(server, body, CLAUDE_CODE_HEADERS | workspace)
    names = [event for event, _ in events]
    assert EVENT_ORDER.fullmatch("".join(f"{e} " for e in names))
    assert names.index("ping") < names.index("message_start")  # the cold prefill sent pings
    delta = next(data for event, data in events if event == "message_delta")
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use", "model_context_window_exceeded")

    client = anthropic.Anthropic(base_url=server.url, api_key="dummy", max_retries=0)
    try:
        second = claude_code_request("e77", "c41d93f2-second")
        with client.beta.messages.stream(**second, betas=BETAS, extra_headers=workspace) as stream:  # type: ignore[arg-type]
            message = stream.get_final_message()
    finally:
        client.close()
    assert message.stop_reason is not None and message.usage.output_tokens > 0

    first_log, second_log = server.wait_logs(mark, 2, "/v1/messages")
    for log in (first_log, second_log):
        assert log["dropped_blocks"] == 1 and log["ignored_fields"] == ["thinking", "context_management"]
        assert log["status"] == 200 and log["path"] == "/v1/messages"
    # the opening (everything but the last message) of the second session was resident from the first
    assert second_log["prefix_tokens"] == first_log["prefix_tokens"] > 500
    assert second_log["reused_tokens"] >= second_log["prefix_tokens"]
    assert message.usage.cache_read_input_tokens >= first_log["prefix_tokens"]
    assert message.usage.cache_read_input_tokens >= 0.9 * total_prompt(message.usage)

    server.settle_warm_next()  # the answer, prefilled for the next turn in the background
    with server.http() as http:
        segments = http.get("/v1/llamanode/sessions/cc-sessions/context").json()["segments"]
    named = ["system[billing line dropped]@cache", "system.2@cache", "tools", "msg0:user@cache"]
    assert [s["name"] for s in segments][:4] == named
    assert all(s["state"] == "reused" for s in segments[:3])


@pytest.fixture(scope="module")
def keeping_server() -> Iterator[ServerProcess]:
    proc = start_server("--keep-billing-header", "--ctx", "1536")
    yield proc
    proc.stop()


@pytest.mark.slow
def test_with_keep_billing_header_each_session_diverges_at_the_billing_line(keeping_server: ServerProcess) -> None:
    workspace = {"X-Llamanode-Workspace": "cc-kept"}
    mark = keeping_server.mark()
    for version, session in (("0b8", "first"), ("e77", "second")):
        body = claude_code_request(version, session) | {"max_tokens": 4, "stream": True}
        sse_events(keeping_server, body, CLAUDE_CODE_HEADERS | workspace)
    first_log, second_log = keeping_server.wait_logs(mark, 2, "/v1/messages")
    assert first_log["dropped_blocks"] == second_log["dropped_blocks"] == 0
    assert second_log["reused_tokens"] < 40 and second_log["prefix_tokens"] > 500
    assert (second_log["divergence"]["cause"], second_log["divergence"]["segment"]) == ("edited", "system@cache")
