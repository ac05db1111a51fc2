"""Anthropic Messages requests as llamanode conversations (server/anthropic_convert.py): the billing
line rule, content blocks, tools, segment names, refusals. No model needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llamanode.chat import ChatMessage
from llamanode.chat_segments import Cut
from llamanode.errors import GrammarError, ToolError
from llamanode.server.anthropic_api import session_of
from llamanode.server.anthropic_convert import convert, is_billing_line
from llamanode.server.anthropic_schemas import MessagesRequest, Metadata
from llamanode.server.errors import ApiError

BILLING = "x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"


def request(**fields: Any) -> MessagesRequest:
    body: dict[str, Any] = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    return MessagesRequest.model_validate(body | fields)


# The billing-line rule: which leading system blocks are dropped (True) and which are kept (False).
BILLING_TABLE = [
    (BILLING, True),
    ("x-anthropic-billing-header: cc_version=2.1.197.8df; cc_entrypoint=cli;", True),
    ("x-anthropic-billing-header: cc_version=2; cc_entrypoint=sdk_ts;", True),
    (BILLING + " ", False),  # nothing after it
    (" " + BILLING, False),  # nothing before it
    (BILLING + "\n", False),
    (BILLING + "You are Claude Code.", False),  # joined to an instruction: rendered as sent
    ("x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli; cch=a5145;", False),
    ("x-anthropic-billing-header: cc_version=2.1.332.0b8;  cc_entrypoint=sdk-cli;", False),
    ("X-Anthropic-Billing-Header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;", False),
    ("x-anthropic-billing-header: cc_version=; cc_entrypoint=sdk-cli;", False),
    ("x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=;", False),
    ("x-anthropic-billing-header: cc_version=2.1 ; cc_entrypoint=cli;", False),
    ("x-anthropic-billing-header: cc_entrypoint=cli; cc_version=2.1.3;", False),
    ("You are a helpful assistant.", False),
]


@pytest.mark.parametrize(("text", "dropped"), BILLING_TABLE)
def test_billing_line_table(text: str, dropped: bool) -> None:
    assert is_billing_line(text) is dropped
    system = [{"type": "text", "text": text}, {"type": "text", "text": "Be brief."}]
    conversation = convert(request(system=system))
    assert conversation.dropped_blocks == int(dropped)
    assert conversation.messages[0] == ChatMessage("system", "Be brief." if dropped else f"{text}\nBe brief.")
    kept = convert(request(system=system), keep_billing_header=True)
    assert kept.dropped_blocks == 0 and kept.messages[0].content == f"{text}\nBe brief."


def test_only_a_leading_block_or_a_whole_string_is_the_billing_line() -> None:
    later = convert(request(system=[{"type": "text", "text": "A"}, {"type": "text", "text": BILLING}]))
    assert later.dropped_blocks == 0 and later.messages[0].content == f"A\n{BILLING}"
    whole = convert(request(system=BILLING))
    assert whole.dropped_blocks == 1 and [m.role for m in whole.messages] == ["user"]


def test_sessions_differing_only_in_the_billing_line_render_the_same_conversation() -> None:
    def system(version: str) -> list[dict[str, Any]]:
        line = BILLING.replace("0b8", version)
        brief = {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
        return [{"type": "text", "text": line}, brief]

    a, b = convert(request(system=system("0b8"))), convert(request(system=system("e77")))
    assert a.messages == b.messages and a.cuts == b.cuts


def test_blocks_become_messages_and_breakpoints_name_segments() -> None:
    body = request(
        system=[
            {"type": "text", "text": BILLING},
            {"type": "text", "text": "Intro.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "ctx"},
                    {"type": "text", "text": "ask", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "more"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hidden", "signature": "s"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.py", "n": [1, "é"]}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "x = 1"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                    {"type": "text", "text": "Go on."},
                ],
            },
        ],
    )
    conversation = convert(body)
    calls = conversation.messages[2].tool_calls
    assert [(m.role, m.content) for m in conversation.messages] == [
        ("system", "Intro.\nRules."),
        ("user", "ctx\nask\nmore"),
        ("assistant", "Reading."),
        ("tool", "x = 1"),
        ("tool", "Error: boom"),
        ("user", "Go on."),
    ]
    assert json.loads(calls[0].arguments) == {"path": "a.py", "n": [1, "é"]} and calls[0].id == "toolu_1"
    assert conversation.cuts == [
        Cut(0, "system[billing line dropped]@cache"),
        Cut(0, "system.2@cache", len("Intro.\n")),
        Cut(1, "msg0:user@cache"),
        Cut(1, "msg0:user.2", len("ctx\nask\n")),
        Cut(2, "msg1:assistant"),
        Cut(3, "msg2:user"),
        Cut(4, "msg2:user.1"),
        Cut(5, "msg2:user.2"),
    ]


def test_a_system_message_among_the_messages_is_rendered_where_it_stands() -> None:
    # Claude Code 2.1.332 sends its environment this way, after the first user turn
    env = {"role": "system", "content": [{"type": "text", "text": "# Environment"}, {"type": "text", "text": "cwd"}]}
    body = request(messages=[{"role": "user", "content": "Hi"}, env, {"role": "user", "content": "Go"}])
    conversation = convert(body)
    assert [(m.role, m.content) for m in conversation.messages] == [
        ("user", "Hi"),
        ("system", "# Environment\ncwd"),
        ("user", "Go"),
    ]
    assert [c.name for c in conversation.cuts] == ["msg0:user", "msg1:system", "msg2:user"]


def test_tool_choice_maps_to_the_tool_core() -> None:
    tools = [{"name": name, "input_schema": {"type": "object"}} for name in ("read", "write")]
    for choice, mode, parallel in [
        ({"type": "auto"}, "auto", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "write"}, "function", True),
        ({"type": "none"}, "none", True),
    ]:
        converted = convert(request(tools=tools, tool_choice=choice)).tools
        assert (converted.choice.mode, converted.parallel) == (mode, parallel)
    assert convert(request(tools=tools, tool_choice={"type": "tool", "name": "write"})).tools.choice.function == "write"
    with pytest.raises(ToolError):
        convert(request(tools=tools, tool_choice={"type": "tool", "name": "nope"}))


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}]},
         "messages.0.content.1: content blocks of type 'image'"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages.0.content.0: content blocks of type 'document'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]},
         "messages.0.content.0.content.0: content blocks of type 'image'"),
        ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "x"}]}]},
         "messages.0.content.0: content blocks of type 'server_tool_use'"),
        ({"messages": [{"role": "system", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]}]},
         "messages.0.content.0: content blocks of type 'tool_use'"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]},
         "tools.0: server tool 'web_search_20250305' (web_search) is not available"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0: server tool 'bash_20250124' (bash)"),
    ],
)  # fmt: skip
def test_blocks_and_tools_that_cannot_be_used_are_refused_by_name(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ApiError) as caught:
        convert(request(**fields))
    assert caught.value.status == 400 and caught.value.message.startswith(where)


def test_a_tool_schema_the_grammar_cannot_enforce_is_refused_naming_the_tool() -> None:
    lookahead = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^(?=r)"}}}
    tools = [{"name": "ok", "input_schema": {"type": "object"}}, {"name": "Workflow", "input_schema": lookahead}]
    with pytest.raises(GrammarError, match=r"tools\.1 \(Workflow\): input_schema: .*'\^\(\?=r\)'.*lookahead"):
        convert(request(tools=tools))


def test_a_tool_schema_with_a_pattern_and_formats_is_accepted() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^job_[a-f0-9]{4,}$"},
                                               "due": {"type": "string", "format": "date"}}}  # fmt: skip
    (spec,) = convert(request(tools=[{"name": "Resume", "input_schema": schema}])).tools.specs
    assert spec.name == "Resume" and spec.parameters == schema


def test_fields_the_model_cannot_honour_are_accepted_and_listed() -> None:
    body = request(thinking={"type": "enabled", "budget_tokens": 31999}, context_management={"edits": []},
                   output_config={"effort": "high"}, service_tier="auto", container="c", mcp_servers=[])  # fmt: skip
    assert body.ignored() == ["thinking", "context_management", "output_config", "service_tier", "container",
                              "mcp_servers"]  # fmt: skip
    assert request().ignored() == []


@pytest.mark.parametrize(
    ("user_id", "session"),
    [
        (json.dumps({"device_id": "d", "account_uuid": "", "session_id": "ae0e8413"}), "ae0e8413"),
        ("user-42", "user-42"),
        (json.dumps({"device_id": "d"}), json.dumps({"device_id": "d"})),
        (json.dumps({"session_id": ""}), json.dumps({"session_id": ""})),
        ("[1, 2]", "[1, 2]"),
        (None, ""),
    ],
)
def test_the_session_of_metadata_user_id(user_id: str | None, session: str) -> None:
    assert session_of(Metadata(user_id=user_id)) == session
    assert session_of(None) == ""
