"""Messages and cache breakpoints as manifest segments: the request log and explain_context name the
message (or block) where reuse stopped, on /v1/chat/completions and /v1/messages alike."""

from __future__ import annotations

from typing import Any

from test_server_support import MODEL, ServerProcess, chat, server

__all__ = ["server"]


def test_chat_completions_name_the_message_where_reuse_stopped(server: ServerProcess) -> None:
    convo = [
        {"role": "system", "content": "You review Python code."},
        {"role": "user", "content": "Here is util.py:\ndef add(a, b):\n    return a + b"},
        {"role": "assistant", "content": "It adds two numbers."},
        {"role": "user", "content": "Add a docstring."},
    ]
    mark = server.mark()
    chat(server, convo, workspace="seg-chat", max_tokens=4)
    edited = [convo[0], {"role": "user", "content": convo[1]["content"].replace("a + b", "b + a")}, *convo[2:]]
    chat(server, edited, workspace="seg-chat", max_tokens=4)
    first, second = server.wait_logs(mark, 2, "/v1/chat/completions")
    assert first["divergence"]["cause"] == "cold"
    assert (second["divergence"]["cause"], second["divergence"]["segment"]) == ("edited", "msg1:user")
    server.settle_warm_next()
    with server.http() as http:
        context = http.get("/v1/llamanode/sessions/seg-chat/context").json()
    names = [s["name"] for s in context["segments"]]  # after the answer was prefilled for the next turn
    assert names == ["system", "msg1:user", "msg2:assistant", "msg3:user", "msg4:assistant"]


def test_messages_name_the_block_after_a_breakpoint_where_reuse_stopped(server: ServerProcess) -> None:
    def body(file_text: str) -> dict[str, Any]:
        blocks = [
            {"type": "text", "text": "Project notes: keep functions short.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": f"File util.py:\n{file_text}"},
        ]
        return {
            "model": MODEL,
            "max_tokens": 4,
            "system": "You review Python code.",
            "messages": [
                {"role": "user", "content": blocks},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Review util.py."},
            ],
        }

    mark = server.mark()
    with server.http() as http:
        for text in ("def add(a, b):\n    return a + b", "def add(a, b):\n    return b + a"):
            response = http.post("/v1/messages", json=body(text), headers={"X-Llamanode-Workspace": "seg-messages"})
            assert response.status_code == 200
    first, second = server.wait_logs(mark, 2, "/v1/messages")
    assert first["divergence"]["segment"] == "system"
    assert (second["divergence"]["cause"], second["divergence"]["segment"]) == ("edited", "msg0:user.1")
