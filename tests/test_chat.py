"""Chat-template rendering and the prefix/suffix split (llamanode.chat)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamanode import KVSession
from llamanode.chat import CHATML_TEMPLATE, ChatMessage, ChatTemplate, ChatTemplateError, discover_special_tokens

# The template inside SmolLM2-135M-Instruct's GGUF (checked against the file below).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
SPECIALS = ("<|im_start|>", "<|im_end|>")


def smollm2() -> ChatTemplate:
    return ChatTemplate(SMOLLM2_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>", special_tokens=SPECIALS)


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role, content) for role, content in pairs]


def test_the_model_carries_the_template_these_tests_use(model_keeper: KVSession) -> None:
    assert model_keeper.identity.chat_template == SMOLLM2_TEMPLATE


def test_smollm2_renders_chatml_with_its_default_system_prompt() -> None:
    text = smollm2().render(msgs(("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye")))
    assert text == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\nHi there<|im_end|>\n"
        + "<|im_start|>assistant\nHello!<|im_end|>\n"
        + "<|im_start|>user\nBye<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )


def test_a_system_message_replaces_the_default_and_no_generation_prompt_when_asked() -> None:
    text = smollm2().render(msgs(("system", "Be terse."), ("user", "Hi")), add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_split_puts_every_message_but_the_last_in_the_prefix() -> None:
    template = smollm2()
    conversation = msgs(("system", "S"), ("user", "U1"), ("assistant", "A1"), ("user", "U2"))
    split = template.split(conversation)
    assert split.text == template.render(conversation)
    assert split.prefix == template.render(conversation[:-1], add_generation_prompt=False)
    assert split.suffix == "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"


def test_split_of_a_single_message_keeps_the_default_system_prompt_in_the_prefix() -> None:
    split = smollm2().split(msgs(("user", "Hi")))
    assert split.prefix == DEFAULT_SYSTEM
    assert split.suffix == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_split_without_known_special_tokens_puts_everything_in_the_suffix() -> None:
    template = ChatTemplate(SMOLLM2_TEMPLATE)
    split = template.split(msgs(("user", "a"), ("assistant", "b"), ("user", "c")))
    assert split.prefix == "" and split.suffix == template.render(
        msgs(("user", "a"), ("assistant", "b"), ("user", "c"))
    )


def test_empty_conversation_is_refused() -> None:
    with pytest.raises(ChatTemplateError):
        smollm2().split([])


def test_a_model_without_template_gets_llama_cpps_chatml() -> None:
    template = ChatTemplate(None)
    assert template.fallback and template.source == CHATML_TEMPLATE
    assert template.render(msgs(("user", "Hi"))) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_llama_cpp_globals_and_filters() -> None:
    source = (
        "{{ messages[0].content | tojson }}|{{ {'a': [1, 2]} | tojson }}|{{ tojson({'k': 'v'}, indent=2) }}|"
        "{{ strftime_now('%Y') | length }}|{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m.role }}{% endfor %}|{{ bos_token }}{{ eos_token }}|{{ enable_thinking }}"
    )
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    text = template.render(msgs(("user", "é <b> & 'q'"), ("assistant", "x")), add_generation_prompt=False)
    parts = text.split("|")
    assert parts[0] == json.dumps("é <b> & 'q'", ensure_ascii=False)  # no HTML escaping, non-ASCII kept
    assert parts[1] == '{"a": [1, 2]}'
    assert parts[2] == json.dumps({"k": "v"}, indent=2)
    assert parts[3] == "4"
    assert parts[4] == "user"  # {% break %}: loop controls are on
    assert parts[5] == "<s></s>"
    assert parts[6] == "True"


def test_add_generation_prompt_is_undefined_unless_true() -> None:
    template = ChatTemplate("{{ add_generation_prompt is defined }}")
    assert template.render([], add_generation_prompt=False) == "False"
    assert template.render([], add_generation_prompt=True) == "True"


def test_trim_and_lstrip_blocks_like_llama_cpp() -> None:
    template = ChatTemplate(
        "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    )
    assert template.render(msgs(("user", "a"), ("user", "b"))) == "a\nb\n"


def test_bos_text_is_stripped_when_the_vocabulary_adds_bos() -> None:
    source = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"
    adds = ChatTemplate(source, bos_token="<s>", eos_token="</s>", add_bos=True, add_eos=True)
    keeps = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    assert adds.render(msgs(("user", "x"))) == "x"
    assert keeps.render(msgs(("user", "x"))) == "<s>x</s>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ raise_exception('only user and assistant roles are supported') }}",
        "{{ messages[0].content + none }}",
        "{{ messages.__class__.__mro__ }}",
        "{{ messages.append(1) }}",
    ],
    ids=["raise_exception", "type error", "sandbox dunder", "immutable sandbox"],
)
def test_template_failures_are_typed_input_errors(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(msgs(("user", "x")))


def test_a_template_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}")


def test_discover_special_tokens_on_the_real_tokenizer(model_keeper: KVSession) -> None:
    found = discover_special_tokens(SMOLLM2_TEMPLATE, model_keeper.tokenize, ("<|im_start|>", "<|im_end|>"))
    assert found == {"<|im_start|>", "<|im_end|>"}
    assert discover_special_tokens("<b>hello</b> <|not_special|>", model_keeper.tokenize) == frozenset()


_content = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60) | st.sampled_from(
    ["", " ", "\n", "  leading", "trailing  ", "def f():\n    return 1\n", "<|im_start|>", "über 😀"]
)


@given(
    contents=st.lists(_content, min_size=1, max_size=6),
    system=st.one_of(st.none(), _content),
)
def test_prefix_plus_suffix_tokenizes_like_the_whole_prompt(
    model_keeper: KVSession, contents: list[str], system: str | None
) -> None:
    conversation = [ChatMessage("system", system)] if system is not None else []
    conversation += [ChatMessage("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]
    split = smollm2().split(conversation)
    tokenize = model_keeper.tokenize
    assert split.prefix + split.suffix == smollm2().render(conversation)
    assert tokenize(split.prefix) + tokenize(split.suffix) == tokenize(split.text)
    assert split.suffix.startswith("<|im_start|>")


def test_developer_role_is_rendered_as_system_like_llama_server() -> None:
    text = smollm2().render(msgs(("developer", "Rules."), ("user", "x")))
    assert text.startswith("<|im_start|>system\nRules.<|im_end|>\n")


def test_a_final_assistant_message_is_continued_not_closed() -> None:
    template = smollm2()
    conversation = msgs(("user", "Write add."), ("assistant", "def add(a, b):"))
    split = template.split(conversation)
    assert (
        split.text == DEFAULT_SYSTEM + "<|im_start|>user\nWrite add.<|im_end|>\n<|im_start|>assistant\ndef add(a, b):"
    )
    assert split.suffix == "<|im_start|>assistant\ndef add(a, b):"
    empty = template.render(msgs(("user", "u"), ("assistant", "")))
    assert empty == DEFAULT_SYSTEM + "<|im_start|>user\nu<|im_end|>\n"  # llama-server drops it, no generation prompt
    with pytest.raises(ChatTemplateError, match="2 or more assistant"):
        template.render(msgs(("user", "u"), ("assistant", "a"), ("assistant", "b")))
