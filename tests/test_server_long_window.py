"""`llamanode serve --ctx 32768` on the default model (trained on 8192): YaRN x4, said at start-up."""

from __future__ import annotations

import pytest

from test_server_support import MODEL, start_server


def test_a_32k_window_is_served_with_yarn_and_the_startup_line_says_so() -> None:
    server = start_server("--ctx", "32768")
    try:
        (line,) = [line for line in server.lines if line.get("event") == "listening"]
        assert line["num_ctx"] == 32768 and line["rope_scaling"] == "yarn x4 (trained window 8192)"
        client = server.client()
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert answer.choices[0].message.content and answer.usage is not None
        assert client.models.retrieve(MODEL).model_extra["meta"]["num_ctx"] == 32768  # type: ignore[index]
    finally:
        server.stop()


def test_a_window_past_the_trained_one_without_scaling_is_refused_at_start() -> None:
    with pytest.raises(RuntimeError, match="rope_scaling"):
        start_server("--ctx", "32768", "--rope-scaling", "none")
