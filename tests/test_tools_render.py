"""Tools in the prompt: the types, format detection, a tool-capable template, and the generic fallback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llamanode import ToolError
from llamanode.chat import ChatMessage, ChatTemplate, ChatTemplateError, messages_from_mappings
from llamanode.tools import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolCall,
    ToolChoice,
    ToolPlan,
    Tools,
    ToolSpec,
    detect_format,
    template_renders_tools,
)
from test_chat import SMOLLM2_TEMPLATE, smollm2

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
READ = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}

# A small tool-aware template written for these tests (Hermes-style calls, its own roles).
TOOL_TEMPLATE = (
    "{%- if tools %}<|sys|>\nTools:\n{% for tool in tools %}"
    "{{ tool.function.name }} {{ tool.function.parameters | tojson }}\n"
    "{% endfor %}Call with <tool_call>JSON</tool_call>.<|end|>\n{% endif %}"
    "{%- for message in messages %}{{ '<|' + message.role + '|>\\n' }}"
    "{%- if message.tool_calls %}{% for call in message.tool_calls %}"
    '<tool_call>{{ {"name": call.function.name, "arguments": call.function.arguments, "id": call.id} | tojson }}'
    "</tool_call>{% endfor %}"
    "{%- elif message.role == 'tool' %}[{{ message.tool_call_id }}] {{ message.content }}"
    "{%- else %}{{ message.content }}{% endif %}<|end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ("<|sys|>", "<|end|>", "<|user|>", "<|assistant|>", "<|tool|>")

CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "user", "content": "And now?"},
]


def tool_template() -> ChatTemplate:
    return ChatTemplate(TOOL_TEMPLATE, special_tokens=SPECIALS)


# -- types -----------------------------------------------------------------------------------------


def test_tools_from_openai_shapes() -> None:
    tools = Tools.from_openai([WEATHER, READ], {"type": "function", "function": {"name": "read_file"}}, False)
    assert [s.name for s in tools.specs] == ["get_weather", "read_file"]
    assert tools.choice == ToolChoice("function", "read_file") and not tools.parallel
    assert [s.name for s in tools.callable] == ["read_file"]
    assert Tools.from_openai([WEATHER], "none").callable == ()
    assert Tools.from_openai([WEATHER]).choice == ToolChoice("auto") and Tools.from_openai([WEATHER]).parallel
    assert tools.specs[0].as_openai() == WEATHER
    assert ToolSpec.from_openai(READ).description == ""


BAD_TOOLS: list[tuple[list[Any], object]] = [
    ([{"type": "retrieval"}], None),
    ([{"type": "function", "function": {"name": "has space"}}], None),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None),
    ([{"type": "function"}], None),
    ([WEATHER, WEATHER], None),
    ([WEATHER], "sometimes"),
    ([WEATHER], "function"),
    ([WEATHER], {"type": "function", "function": {"name": "read_file"}}),
    ([], "required"),
    ([WEATHER], {"type": "tool", "name": "get_weather"}),
]


@pytest.mark.parametrize(("tools", "choice"), BAD_TOOLS)
def test_malformed_tools_are_refused_with_tool_error(tools: list[Any], choice: object) -> None:
    with pytest.raises(ToolError):
        Tools.from_openai(tools, choice)


def test_tool_calls_hold_json_object_arguments() -> None:
    call = ToolCall.from_openai({"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": [1]}}})
    assert call.arguments == '{"a": [1]}' and call.arguments_value() == {"a": [1]}
    assert call.as_template_value() == {
        "type": "function",
        "function": {"name": "f", "arguments": {"a": [1]}},
        "id": "c",
    }
    assert "id" not in ToolCall("", "f", "{}").as_template_value()
    for bad in ("[1]", "{", "", "null"):
        with pytest.raises(ToolError):
            ToolCall("c", "f", bad)
    with pytest.raises(ToolError):
        ToolCall("c", "", "{}")


def test_messages_from_mappings_reads_tool_fields() -> None:
    messages = messages_from_mappings(CONVERSATION)
    assert messages[1] == ChatMessage("assistant", "", None, (ToolCall("c1", "get_weather", '{"city": "Paris"}'),))
    assert messages[2].tool_call_id == "c1" and messages[2].role == "tool"
    assert messages[1].as_template_value()["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2].as_template_value() == {"role": "tool", "content": "18 C", "tool_call_id": "c1"}


# -- detection -------------------------------------------------------------------------------------


def test_formats_are_detected_from_template_code() -> None:
    assert detect_format(TOOL_TEMPLATE) is HERMES
    assert detect_format(SMOLLM2_TEMPLATE) is GENERIC
    assert detect_format(None) is GENERIC
    assert detect_format("{% for t in tools %}[TOOL_CALLS]{% endfor %}") is MISTRAL
    assert detect_format("{% if tools %}<|python_tag|>{% endif %}") is LLAMA3
    assert detect_format("{% if tools %}<|start_header_id|>ipython{% endif %}") is LLAMA3
    assert detect_format("{% if tools %}some other syntax{% endif %}") is GENERIC
    assert not template_renders_tools("You may use tools. <tool_call>{{ messages }}")  # prose is not code
    assert template_renders_tools("{{- tools | tojson }}") and tool_template().renders_tools
    assert not smollm2().renders_tools


# -- a tool-capable template -------------------------------------------------------------------------


def test_a_native_template_receives_tools_calls_and_results() -> None:
    plan = ToolPlan(tool_template(), Tools.from_openai([WEATHER]))
    assert plan.format is HERMES
    text = plan.render(messages_from_mappings(CONVERSATION))
    params = json.dumps(WEATHER["function"]["parameters"])
    assert text == (
        f"<|sys|>\nTools:\nget_weather {params}\nCall with <tool_call>JSON</tool_call>.<|end|>\n"
        "<|user|>\nWeather in Paris?<|end|>\n"
        "<|assistant|>\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "c1"}</tool_call><|end|>\n'
        "<|tool|>\n[c1] 18 C<|end|>\n"
        "<|user|>\nAnd now?<|end|>\n"
        "<|assistant|>\n"
    )


def test_without_tools_the_native_template_sees_no_tools_variable() -> None:
    plain = ToolPlan(tool_template(), Tools(())).render([ChatMessage("user", "hi")])
    assert plain == tool_template().render([ChatMessage("user", "hi")]) == "<|user|>\nhi<|end|>\n<|assistant|>\n"


def test_native_split_keeps_the_tools_in_the_prefix() -> None:
    plan = ToolPlan(tool_template(), Tools.from_openai([WEATHER]))
    messages = messages_from_mappings(CONVERSATION)
    split = plan.split(messages)
    assert split.text == plan.render(messages)
    assert split.prefix.startswith("<|sys|>\nTools:") and split.suffix == "<|user|>\nAnd now?<|end|>\n<|assistant|>\n"


def test_a_final_assistant_message_with_tool_calls_is_refused() -> None:
    with pytest.raises(ChatTemplateError):
        tool_template().render(messages_from_mappings(CONVERSATION[:2]))


# -- the generic fallback (the default model's template has no tool support) ------------------------


def test_fallback_tells_the_model_about_tools_and_renders_calls_and_results() -> None:
    plan = ToolPlan(smollm2(), Tools.from_openai([WEATHER, READ], "required"))
    assert plan.format is GENERIC
    text = plan.render(messages_from_mappings(CONVERSATION))
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nYou can call functions")
    assert (
        json.dumps(
            {"name": "get_weather", "description": "Weather now", **{"parameters": WEATHER["function"]["parameters"]}}
        )
        in system
    )
    assert '{"name": "read_file", "description": "", "parameters": {"type": "object"}}' in system
    assert "<tool_call>\n{" in system and "<tool_response>" in system
    assert rest == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response name="get_weather" id="c1">\n18 C\n</tool_response><|im_end|>\n'
        "<|im_start|>user\nAnd now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_fallback_block_does_not_depend_on_the_choice_so_the_prefix_stays_warm() -> None:
    messages = messages_from_mappings(CONVERSATION)
    prefixes = {
        ToolPlan(smollm2(), Tools.from_openai([WEATHER], choice)).split(messages).prefix
        for choice in ("auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}})
    }
    assert len(prefixes) == 1


def test_fallback_joins_an_existing_system_message_and_groups_parallel_results() -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Both?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"x"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sun"},
        {"role": "tool", "tool_call_id": "b", "content": "x = 1"},
    ]
    text = ToolPlan(smollm2(), Tools.from_openai([WEATHER, READ])).render(messages_from_mappings(conversation))
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions")
    assert text.count("<|im_start|>system") == 1
    assert (
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "read_file", "arguments": {"path":"x"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response name="get_weather" id="a">\nsun\n</tool_response>\n'
        '<tool_response name="read_file" id="b">\nx = 1\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    ) in text


def test_fallback_without_tools_changes_nothing() -> None:
    messages = [ChatMessage("user", "hi")]
    assert ToolPlan(smollm2(), Tools(())).render(messages) == smollm2().render(messages)


def test_a_tool_result_that_names_no_call_is_refused() -> None:
    with pytest.raises(ToolError):
        ToolPlan(smollm2(), Tools.from_openai([WEATHER])).render([ChatMessage("tool", "orphan")])


def test_plans_give_a_grammar_and_a_parser_only_when_calls_are_possible() -> None:
    auto = ToolPlan(smollm2(), Tools.from_openai([WEATHER]))
    assert auto.decode_options()["grammar_triggers"] == ("<tool_call>",) and auto.parser() is not None
    forced = ToolPlan(smollm2(), Tools.from_openai([WEATHER], "required"))
    assert forced.decode_options()["grammar_triggers"] == () and forced.decode_options()["grammar"].startswith(
        "root ::="
    )
    none = ToolPlan(smollm2(), Tools.from_openai([WEATHER], "none"))
    assert none.decode_options() == {} and none.parser() is None


# A strict template written for this test: no system role, and user/assistant must alternate.
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{% if (message.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}"
    "{% endif %}[{{ message.role }}] {{ message.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_fallback_obeys_a_template_without_system_role_that_demands_alternation() -> None:
    strict = ChatTemplate(STRICT_TEMPLATE)
    with pytest.raises(ChatTemplateError):
        strict.render([ChatMessage("user", "a"), ChatMessage("user", "b")])
    conversation = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    plan = ToolPlan(strict, Tools.from_openai([WEATHER]))
    text = plan.render(messages_from_mappings(conversation))
    first, call, results, ask = text.split("\n[")
    assert first.startswith("[user] Be brief.\n\nYou can call functions") and first.endswith("\n\nWeather in Paris?")
    assert call.startswith("assistant] <tool_call>\n")
    assert results == 'user] <tool_response name="get_weather" id="c1">\n18 C\n</tool_response>\n\nAnd now?'
    assert ask == "assistant] "
