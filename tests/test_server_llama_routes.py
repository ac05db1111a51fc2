"""llama-server's utility routes (/tokenize, /detokenize, /apply-template) and model aliases, on a real server."""

from __future__ import annotations

from agent_support import ALIAS, agent_server, chat_tool
from test_server_support import MODEL, ServerProcess

__all__ = ["agent_server"]

TEXT = "This is a test string with unicode 媽 and emoji 🤗 <|im_end|>"


def test_tokenize_and_detokenize_round_trip(agent_server: ServerProcess) -> None:
    with agent_server.http() as http:
        tokens = http.post("/tokenize", json={"content": TEXT}).json()["tokens"]
        assert len(tokens) > 5 and all(isinstance(t, int) for t in tokens)
        assert tokens[-1] == 2  # <|im_end|> is parsed as the special token
        assert http.post("/detokenize", json={"tokens": tokens}).json() == {"content": TEXT}
        pieces = http.post("/tokenize", json={"content": TEXT, "with_pieces": True}).json()["tokens"]
        assert [p["id"] for p in pieces] == tokens
        raw = b"".join(bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode() for p in pieces)
        assert raw.decode() == TEXT  # pieces that are not UTF-8 on their own come as bytes
        assert any(isinstance(p["piece"], list) for p in pieces)
        mixed = http.post("/tokenize", json={"content": ["Hello", 2, " world"]}).json()["tokens"]
        assert mixed[: len(mixed) - 1].count(2) == 1 and 2 in mixed
        # the default model's vocabulary adds no BOS, so add_special changes nothing (as in llama-server)
        assert (
            http.post("/tokenize", json={"content": "Hi", "add_special": True}).json()["tokens"]
            == (http.post("/tokenize", json={"content": "Hi"}).json()["tokens"])
        )


def test_bad_token_ids_and_unsupported_options_are_400(agent_server: ServerProcess) -> None:
    with agent_server.http() as http:
        response = http.post("/detokenize", json={"tokens": [1, 10**7]})
        assert response.status_code == 400 and "outside the vocabulary" in response.json()["error"]["message"]
        assert http.post("/detokenize", json={"tokens": [-1]}).status_code == 400
        response = http.post("/tokenize", json={"content": "x", "parse_special": False})
        assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_feature"


def test_apply_template_gives_the_prompt_a_chat_request_renders(agent_server: ServerProcess) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    with agent_server.http() as http:
        plain = http.post("/apply-template", json={"messages": ask}).json()["prompt"]
        with_tools = http.post("/apply-template", json={"messages": ask, "tools": [chat_tool("get_weather")]}).json()
        usage = http.post("/v1/chat/completions", json={"model": ALIAS, "messages": ask, "max_tokens": 1}).json()
        tokens = http.post("/tokenize", json={"content": plain}).json()["tokens"]
    assert plain.endswith("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    assert len(tokens) == usage["usage"]["prompt_tokens"]  # the same prompt the chat route tokenized
    assert '"name": "get_weather"' in with_tools["prompt"] and "get_weather" not in plain


def test_aliases_are_listed_described_and_accepted(agent_server: ServerProcess) -> None:
    client = agent_server.client()
    assert [m.id for m in client.models.list().data] == [MODEL, ALIAS]
    assert client.models.retrieve(ALIAS).id == ALIAS
    answer = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert answer.model == MODEL
    with agent_server.http() as http:
        assert http.get("/v1/models/not-served").status_code == 404
