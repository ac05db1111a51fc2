"""Conversation prefixes as named manifest segments (llamanode.chat_segments), on the default model's
template, a tool-aware template and templates written here to be awkward."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llamanode.chat_segments as chat_segments_module
from llamanode.chat import ChatMessage, ChatTemplate, messages_from_mappings
from llamanode.chat_segments import Cut, StartCache, chat_segments, message_cuts, prompt_segments
from llamanode.tools import ToolPlan, Tools
from test_chat import smollm2
from test_tools_render import CONVERSATION, WEATHER, tool_template

# Llama-3-like: the role header carries two special tokens, the turn closes with a third.
HEADERS_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m.role }}<|head_end|>\n\n{{ m.content | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant<|head_end|>\n\n{% endif %}"
)
HEADERS_SPECIALS = ("<|start|>", "<|head_end|>", "<|eot|>")
# Renders every message after the last user one differently (as reasoning templates do): a
# shortened conversation disagrees with the whole one, so its boundaries can only get coarser.
LOOKAHEAD_TEMPLATE = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<s>{{ m.role }}{% if loop.index0 > ns.last %}*{% endif %}: {{ m.content }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _segments(template: ChatTemplate, messages: list[ChatMessage]) -> tuple[tuple[str, str], ...]:
    split = template.split(messages)
    segments = chat_segments(template, messages, split)
    assert "".join(text for _, text in segments) == split.prefix
    return segments


def test_each_message_of_the_prefix_is_a_segment_with_its_role_header() -> None:
    convo = [ChatMessage("system", "S"), ChatMessage("user", "U1"), ChatMessage("assistant", "A1")]
    segments = _segments(smollm2(), [*convo, ChatMessage("user", "U2")])
    assert segments == (
        ("system", "<|im_start|>system\nS<|im_end|>\n"),
        ("msg1:user", "<|im_start|>user\nU1<|im_end|>\n"),
        ("msg2:assistant", "<|im_start|>assistant\nA1<|im_end|>\n"),
    )


def test_the_default_system_prompt_belongs_to_the_first_message() -> None:
    segments = _segments(
        smollm2(), [ChatMessage("user", "U1"), ChatMessage("assistant", "A1"), ChatMessage("user", "U2")]
    )
    assert [name for name, _ in segments] == ["msg0:user", "msg1:assistant"]
    assert segments[0][1].startswith("<|im_start|>system\nYou are a helpful AI assistant")


def test_a_turn_closes_in_its_own_segment_and_the_next_one_opens_with_its_header() -> None:
    template = ChatTemplate(HEADERS_TEMPLATE, special_tokens=HEADERS_SPECIALS)
    convo = [ChatMessage("user", " U1 "), ChatMessage("assistant", "A1"), ChatMessage("user", "U2")]
    segments = _segments(template, convo)
    assert segments[0] == ("msg0:user", "<|start|>user<|head_end|>\n\nU1<|eot|>")
    assert segments[1] == ("msg1:assistant", "<|start|>assistant<|head_end|>\n\nA1<|eot|>")
    assert segments[2] == ("msg2:user", "<|start|>user")  # the split cuts before the last special token


def test_a_cut_inside_a_message_splits_it_where_its_content_says() -> None:
    template = smollm2()
    convo = [ChatMessage("system", "block one\nblock two"), ChatMessage("user", "U")]
    split = template.split(convo)
    cuts = [Cut(0, "system@cache"), Cut(0, "system.1", offset=len("block one\n")), Cut(1, "msg0:user")]
    segments = prompt_segments(split, convo, cuts, lambda ms, gen: template.render(ms, add_generation_prompt=gen))
    assert segments == (
        ("system@cache", "<|im_start|>system\nblock one\n"),
        ("system.1", "block two<|im_end|>\n"),
    )


def test_tools_get_their_own_segment_in_the_generic_fallback() -> None:
    plan = ToolPlan(smollm2(), Tools.from_openai([WEATHER]))
    convo = messages_from_mappings([{"role": "system", "content": "Be brief."}, *CONVERSATION])
    split = plan.split(convo)
    segments = dict(plan.segments(convo, split, message_cuts(convo)))
    assert "".join(segments.values()) == split.prefix
    assert segments["system"] == "<|im_start|>system\nBe brief."
    assert segments["tools"].startswith("\n\nYou can call functions") and segments["tools"].endswith("<|im_end|>\n")
    assert "get_weather" in segments["tools"] and "get_weather" in segments["msg2:assistant"]
    assert segments["msg3:tool"].startswith("<|im_start|>user\n<tool_response")


def test_tools_of_a_native_template_and_a_first_message_that_resumes_after_them() -> None:
    plan = ToolPlan(tool_template(), Tools.from_openai([WEATHER]))
    convo = messages_from_mappings(CONVERSATION)
    split = plan.split(convo)
    segments = plan.segments(convo, split, message_cuts(convo))
    assert "".join(text for _, text in segments) == split.prefix
    names = [name for name, _ in segments]
    assert names == ["tools", "msg0:user", "msg1:assistant", "msg2:tool"]
    assert dict(segments)["tools"].startswith("<|sys|>\nTools:\nget_weather")


def test_a_template_that_looks_ahead_gives_coarser_segments_that_still_tile_the_prefix() -> None:
    template = ChatTemplate(LOOKAHEAD_TEMPLATE, special_tokens=("<s>", "</s>"))
    convo = [ChatMessage("user", "U1"), ChatMessage("assistant", "A1"), ChatMessage("user", "U2")]
    assert _segments(template, convo) == (("msg0:user", "<s>user: U1</s>"), ("msg1:assistant", "<s>assistant: A1</s>"))
    convo = [ChatMessage("user", "U1"), ChatMessage("assistant", "A1"), ChatMessage("assistant", "A2"), convo[-1]]
    assert _segments(template, convo) == (
        ("msg0:user", "<s>user: U1</s>"),
        ("msg1:assistant", "<s>assistant: A1</s><s>assistant: A2</s>"),
    )


TEMPLATES = {
    "smollm2": smollm2(),
    "headers": ChatTemplate(HEADERS_TEMPLATE, special_tokens=HEADERS_SPECIALS),
    "lookahead": ChatTemplate(LOOKAHEAD_TEMPLATE, special_tokens=("<s>", "</s>")),
}
roles = st.sampled_from(["user", "assistant"])
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@given(
    system=st.none() | texts,
    turns=st.lists(st.tuples(roles, texts), min_size=1, max_size=6),
    which=st.sampled_from(["smollm2", "headers", "lookahead"]),
)
def test_segments_tile_the_prefix_in_order_for_any_conversation(
    system: str | None, turns: list[tuple[str, str]], which: str
) -> None:
    template = TEMPLATES[which]
    convo = ([ChatMessage("system", system)] if system is not None else []) + [ChatMessage(r, t) for r, t in turns]
    convo.append(ChatMessage("user", "?"))
    segments = _segments(template, convo)
    names = [name for name, _ in segments]
    order = [i for i, cut in enumerate(message_cuts(convo)) if cut.name in names]
    assert order == sorted(order) and len(set(names)) == len(names)
    assert all(text for _, text in segments) or len(segments) == 1
    for cut in message_cuts(convo)[:-1]:  # a prefix message with its own segment has its content there
        if cut.name in names:
            assert convo[cut.message].content.strip() in dict(segments)[cut.name]


class _Recording(StartCache):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.hits = 0

    def get(self, key: str) -> tuple[int, str] | None:
        found = super().get(key)
        self.hits += found is not None
        return found

    def put(self, key: str, length: int, digest: str) -> None:
        self.keys.append(key)
        super().put(key, length, digest)


def test_message_starts_are_remembered_and_used_only_where_the_prompt_begins_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = _Recording()
    monkeypatch.setattr(chat_segments_module, "START_CACHE", cache)
    template = smollm2()
    convo = [
        ChatMessage("system", "S"),
        ChatMessage("user", "U1"),
        ChatMessage("assistant", "A1"),
        ChatMessage("user", "U2"),
    ]
    cold = _segments(template, convo)
    assert cache.hits == 0 and len(cache.keys) == 3
    longer = [*convo, ChatMessage("assistant", "A2"), ChatMessage("user", "U3")]
    grown = _segments(template, longer)
    assert cache.hits == 3 and grown[:3] == cold  # the earlier messages' starts came from the cache
    for key in list(cache.keys):  # remembered texts the prompt does not begin with are never used
        cache.put(key, 5, "0" * 64)
    assert _segments(template, longer) == grown
    other = ChatTemplate(HEADERS_TEMPLATE, special_tokens=HEADERS_SPECIALS)  # another template: other keys
    hits = cache.hits
    _segments(other, longer)
    assert cache.hits == hits
