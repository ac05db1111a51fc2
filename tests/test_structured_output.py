"""Schema-constrained decoding on the real model, in the session API and through a real server:
every answer that finishes with `stop` parses with json.loads and validates; one cut by max_tokens
says `length`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from json_schemas import FORMAT_CHECKER, schemas
from llamanode import Config, DecodeConfig, KVSession, open_session
from test_server_support import MODEL, ServerProcess, server

__all__ = ["server"]

MAX_TOKENS = 48
QUESTIONS = (
    "Describe a person.",
    "Write a Python function that adds two numbers.",
    "List three fruits, one per line.",
    "Give the settings of a web server.",
    "Write a haiku about rain.",
)
_question = st.one_of(st.sampled_from(QUESTIONS), st.text(min_size=1, max_size=40))
_sampling = st.one_of(st.just((0.0, None)), st.tuples(st.just(0.9), st.integers(0, 2**31)))
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def _prompt(question: str, schema: object) -> str:
    ask = f"{question} Reply in JSON matching this schema: {json.dumps(schema)}"
    return f"<|im_start|>user\n{ask}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def session(model_keeper: KVSession) -> Iterator[KVSession]:
    s = open_session(None, Config(num_ctx=2048, num_threads=1))
    assert isinstance(s, KVSession)
    yield s
    s.close()


def _answer(session: KVSession, prompt: str, config: DecodeConfig) -> tuple[str, str | None, int]:
    session.ensure_prefix(session.prefix([("prompt", prompt)]))
    chunks = list(session.decode(config))
    final = chunks[-1]
    assert final.report is not None
    return "".join(c.text for c in chunks), final.finish_reason, final.report.generated_tokens


def _check(text: str, finish: str | None, produced: int, schema: dict[str, Any]) -> None:
    event(f"finish={finish}")
    if finish == "stop":
        jsonschema.validate(json.loads(text), schema, format_checker=FORMAT_CHECKER)
    else:
        assert (finish, produced) == ("length", MAX_TOKENS), text


CODE = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 80}}, "required": ["code"]}


def test_code_in_a_string_is_escaped_not_raw(session: KVSession) -> None:
    """llama-cpp-python's converter let this answer carry a raw newline inside the string (json.loads failed)."""
    prompt = "<|im_start|>user\nWrite a Python function that adds two numbers. Reply in JSON.<|im_end|>\n"
    text, finish, _ = _answer(
        session, prompt + "<|im_start|>assistant\n", DecodeConfig(max_tokens=100, json_schema=CODE)
    )
    assert finish == "stop"
    value = json.loads(text)
    jsonschema.validate(value, CODE)
    assert value["code"].startswith("def ")


def test_an_answer_cut_by_max_tokens_says_length(session: KVSession) -> None:
    text, finish, produced = _answer(
        session, _prompt("Describe a person.", CODE), DecodeConfig(max_tokens=3, json_schema=CODE)
    )
    assert (finish, produced) == ("length", 3)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def _constrained_answer_is_valid(
    session: KVSession, schema: dict[str, Any], question: str, sampling: tuple[float, int | None]
) -> None:
    temperature, seed = sampling
    config = DecodeConfig(max_tokens=MAX_TOKENS, json_schema=schema, temperature=temperature, seed=seed)
    _check(*_answer(session, _prompt(question, schema), config), schema)


test_every_constrained_answer_that_stops_is_valid = settings(max_examples=12, suppress_health_check=_HEALTH)(
    given(schema=schemas, question=_question, sampling=_sampling)(_constrained_answer_is_valid)
)
test_every_constrained_answer_that_stops_is_valid_thorough = pytest.mark.slow(
    settings(max_examples=150, suppress_health_check=_HEALTH)(
        given(schema=schemas, question=_question, sampling=_sampling)(_constrained_answer_is_valid)
    )
)


# -- through the HTTP server (response_format), with the official openai client ----------------

OBJECT = {"type": "object"}


def _chat(
    server: ServerProcess, question: str, response_format: dict[str, Any], sampling: tuple[float, int | None]
) -> Any:
    temperature, seed = sampling
    return server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=temperature,
        seed=seed,  # type: ignore[arg-type]
        response_format=response_format,  # type: ignore[arg-type]
        extra_headers={"X-Llamanode-Workspace": "structured"},
    )


@settings(max_examples=6, suppress_health_check=_HEALTH)
@given(schema=schemas, question=_question, sampling=_sampling)
def test_server_json_schema_answers_that_stop_are_valid(
    server: ServerProcess, schema: dict[str, Any], question: str, sampling: tuple[float, int | None]
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    result = _chat(server, f"{question} Reply in JSON: {json.dumps(schema)}", response_format, sampling)
    choice = result.choices[0]
    _check(choice.message.content, choice.finish_reason, result.usage.completion_tokens, schema)


@settings(max_examples=4, suppress_health_check=_HEALTH)
@given(question=_question, sampling=_sampling)
def test_server_json_object_answers_that_stop_are_objects(
    server: ServerProcess, question: str, sampling: tuple[float, int | None]
) -> None:
    result = _chat(server, f"{question} Reply in JSON.", {"type": "json_object"}, sampling)
    choice = result.choices[0]
    _check(choice.message.content, choice.finish_reason, result.usage.completion_tokens, OBJECT)
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
