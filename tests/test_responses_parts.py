"""Responses API parts without a model: input items and tools read by their rules, the store's bounds,
the draft's events and items, and the Reply's finish reasons."""

from __future__ import annotations

from typing import Any

import pytest

from llamanode.chat import ChatMessage
from llamanode.errors import ToolError
from llamanode.server.errors import ApiError
from llamanode.server.reply import Reply
from llamanode.server.responses_events import InputTokensDetails, OutputTokensDetails, ResponseObject, ResponseUsage
from llamanode.server.responses_items import read_input, read_tools
from llamanode.server.responses_output import ResponseDraft
from llamanode.server.responses_schemas import ResponseRequest
from llamanode.server.responses_store import ResponseStore, StoredResponse
from llamanode.tools import ArgumentsDelta, CallFinished, CallStarted, ContentDelta, ToolCall


def request(**fields: Any) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "m", **fields})


def test_input_items_become_chat_messages() -> None:
    body = request(
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": t} for t in "ab"]},
            {"type": "message", "role": "user", "content": "Hi", "id": "msg_1", "status": "completed"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
        ]
    )  # fmt: skip
    conversation = read_input(body.input)
    assert conversation.dropped_reasoning == 1
    assert conversation.messages == [
        ChatMessage("developer", "a\nb"),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Let me look.", None, (ToolCall("c1", "f", "{}"), ToolCall("c2", "g", '{"x": 1}'))),
        ChatMessage("tool", "one", tool_call_id="c1"),
        ChatMessage("tool", "two", tool_call_id="c2"),
        ChatMessage("assistant", "", None, (ToolCall("c3", "f", "{}"),)),
    ]
    assert read_input(request(input="Hello").input).messages == [ChatMessage("user", "Hello")]


def test_what_codex_sends_back_is_rendered_as_sent() -> None:
    # a call cut by max_output_tokens (its arguments end mid-string), and an output of a namespaced tool
    cut = '{"questions": [{"id": "r'
    body = request(
        input=[
            {"type": "function_call", "status": "incomplete", "call_id": "c1", "name": "ask", "arguments": cut},
            {"type": "function_call_output", "call_id": "c1", "output": "unavailable"},
            {"type": "function_call_output", "name": "goal_objective", "namespace": "agent", "output": "Codex"},
        ]
    )
    call = ToolCall("c1", "ask", cut, complete=False)
    assert read_input(body.input).messages == [
        ChatMessage("assistant", "", None, (call,)),
        ChatMessage("tool", "unavailable", tool_call_id="c1"),
        ChatMessage("tool", "Codex", name="goal_objective"),
    ]
    assert call.as_template_value()["function"]["arguments"] == cut
    complete = request(input=[{"type": "function_call", "call_id": "c1", "name": "ask", "arguments": cut}])
    with pytest.raises(ToolError, match="arguments are not valid JSON"):  # the server's 400
        read_input(complete.input)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "item_reference"),
        ({"type": "local_shell_call", "id": "x"}, "local_shell_call"),
        ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input_file"),
        ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}, "input_image"),
    ],
)
def test_items_nobody_can_render_are_refused_by_name(item: dict[str, Any], named: str) -> None:
    with pytest.raises(ApiError) as refused:
        read_input(request(input=[item]).input)
    assert (
        refused.value.status == 400 and refused.value.code == "unsupported_feature" and named in refused.value.message
    )


def test_function_tools_are_offered_and_the_others_named() -> None:
    tools = [
        {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False, "defer_loading": True},
        {"type": "namespace", "name": "agents", "tools": []},
        {"type": "web_search", "external_web_access": True},
    ]
    found, ignored = read_tools(request(tools=tools, tool_choice={"type": "function", "name": "f"}))
    assert found is not None and [s.name for s in found.specs] == ["f"] and found.choice.function == "f"
    assert ignored == ["namespace:agents", "web_search"]
    found, ignored = read_tools(request(tools=tools[1:], tool_choice="auto"))
    assert found is None and len(ignored) == 2
    with pytest.raises(ApiError):
        read_tools(request(tools=tools[1:], tool_choice="required"))
    found, _ = read_tools(request(tools=tools[:1], parallel_tool_calls=False))
    assert found is not None and not found.parallel


def stored(text: str) -> StoredResponse:
    response = ResponseObject.model_validate(
        {"id": "r", "created_at": 0, "status": "completed", "instructions": None, "max_output_tokens": None,
         "metadata": {}, "model": "m", "output": [], "parallel_tool_calls": True, "previous_response_id": None,
         "prompt_cache_key": None, "reasoning": {}, "store": True, "temperature": 0.0, "text": {},
         "tool_choice": "auto", "tools": [], "top_p": 1.0, "user": None}
    )  # fmt: skip
    return StoredResponse("ws", (ChatMessage("user", text),), response)


def test_the_store_keeps_the_most_recent_within_its_count_and_bytes() -> None:
    store = ResponseStore(max_responses=3, max_text_bytes=100)
    for i in range(4):
        store.put(f"r{i}", stored("x" * 10))
    assert store.get("r0") is None and len(store) == 3
    assert store.get("r1") is not None  # now the most recently used
    store.put("big", stored("y" * 75))  # 30 + 75 bytes > 100: the least recently used goes
    assert store.get("r2") is None and store.get("r1") is not None and store.get("big") is not None
    store.put("huge", stored("z" * 101))  # larger than the whole budget: not kept at all
    assert store.get("huge") is None


USAGE = ResponseUsage(
    input_tokens=10,
    input_tokens_details=InputTokensDetails(cached_tokens=4, cache_write_tokens=6),
    output_tokens=2,
    output_tokens_details=OutputTokensDetails(),
    total_tokens=12,
)


def draft() -> ResponseDraft:
    return ResponseDraft(stored("").response.model_copy(update={"status": "in_progress", "output": []}))


def test_the_draft_announces_each_item_whole_and_in_order() -> None:
    d = draft()
    types = [e.type for e in d.opening()]
    types += [e.type for e in d.feed([ContentDelta("Let me"), ContentDelta(" look.")])]
    types += [
        e.type for e in d.feed([CallStarted(0, "call_1", "f"), ArgumentsDelta(0, '{"a":'), ArgumentsDelta(0, " 1}")])
    ]
    types += [e.type for e in d.feed([CallFinished(0, "call_1", "f", '{"a": 1}', True), ContentDelta("Done.")])]
    end = d.end("stop", usage=None)  # type: ignore[arg-type]
    types += [e.type for e in end]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert end[-1].sequence_number == len(types) - 1  # numbered 0, 1, 2, ... across the whole stream
    out = d.response.output
    assert [o.type for o in out] == ["message", "function_call", "message"]
    assert out[0].content[0].text == "Let me look." and out[1].arguments == '{"a": 1}'  # type: ignore[union-attr]
    assert d.response.status == "completed" and all(o.status == "completed" for o in out)


def test_a_length_cut_leaves_the_response_and_its_open_items_incomplete() -> None:
    d = draft()
    d.feed(
        [CallStarted(0, "call_1", "f"), ArgumentsDelta(0, '{"a": '), CallFinished(0, "call_1", "f", '{"a": ', False)]
    )
    d.end("length", usage=None)  # type: ignore[arg-type]
    assert d.response.status == "incomplete" and d.response.incomplete_details is not None
    assert d.response.output[0].status == "incomplete"
    failed = draft().fail(ApiError(400, "too long", code="context_length_exceeded"))
    assert [e.type for e in failed] == ["error", "response.failed"]
    assert failed[1].response.error.code == "context_length_exceeded"  # type: ignore[union-attr]


def test_the_reply_names_the_finish_reason() -> None:
    plain = Reply(None)
    plain.read("hello")
    assert plain.content == "hello" and plain.finish_reason("stop") == "stop" and plain.message().tool_calls == ()
    called = Reply(None)
    called.calls.append(CallFinished(0, "c", "f", "{}", True))
    assert called.finish_reason("stop") == "tool_calls" and called.finish_reason("length") == "length"
    called.calls.append(CallFinished(1, "d", "f", "{", False))
    assert [c.id for c in called.tool_calls()] == ["c"]  # a cut call is not sent back
