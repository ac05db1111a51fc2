"""Our rendering against llama.cpp's own: llama-server's /apply-template on the same GGUF.

Needs the llama-server binary (bench/build_llama_server.sh); skipped when it is not built.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.processes import LLAMA_SERVER, Server, free_port
from llamanode import KVSession, default_model_path
from llamanode.chat import ChatMessage, ChatTemplate, discover_special_tokens

pytestmark = pytest.mark.skipif(not LLAMA_SERVER.exists(), reason=f"{LLAMA_SERVER} not built")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    port = free_port()
    cmd = [str(LLAMA_SERVER), "-m", str(default_model_path()), "--port", str(port), "-c", "512", "-t", "1", "-np", "1"]
    with Server("llama-server", [*cmd, "--jinja", "--no-webui"], port, "/health") as server:
        server.start(tmp_path_factory.mktemp("llama-server"), timeout=60)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


@pytest.fixture(scope="module")
def ours(model_keeper: KVSession) -> ChatTemplate:
    source = model_keeper.identity.chat_template
    specials = discover_special_tokens(source or "", model_keeper.tokenize, ("<|im_start|>", "<|im_end|>"))
    return ChatTemplate(source, special_tokens=specials)


def _theirs(client: httpx.Client, messages: list[dict[str, object]]) -> str:
    response = client.post("/apply-template", json={"messages": messages})
    assert response.status_code == 200, response.text
    return str(response.json()["prompt"])


CASES: list[list[dict[str, object]]] = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "x"}],
    [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, here"}],
    [{"role": "user", "content": "  spaces \n\n and <|im_start|> inside  "}],
    [{"role": "user", "content": "ünïcödé 😀 \t tabs"}],
]


def _ours(template: ChatTemplate, messages: list[dict[str, object]]) -> str:
    chat = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(str(part["text"]) for part in content)
        chat.append(ChatMessage(str(m["role"]), str(content)))
    split = template.split(chat)
    assert split.prefix + split.suffix == template.render(chat)
    return split.text


@pytest.mark.parametrize("messages", CASES, ids=[str(i) for i in range(len(CASES))])
def test_rendering_equals_llama_servers(
    llama_server: httpx.Client, ours: ChatTemplate, messages: list[dict[str, object]]
) -> None:
    assert _ours(ours, messages) == _theirs(llama_server, messages)


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@settings(max_examples=40)
@given(
    system=st.one_of(st.none(), _text),
    turns=st.lists(_text, min_size=1, max_size=5),
)
def test_random_conversations_render_like_llama_server(
    llama_server: httpx.Client, ours: ChatTemplate, system: str | None, turns: list[str]
) -> None:
    messages: list[dict[str, object]] = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    assert _ours(ours, messages) == _theirs(llama_server, messages)
