"""Decoding on the real default model: sampling, grammars, stop strings, UTF-8, early close."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import GREEDY_32, SEGMENTS, SUFFIX, SYSTEM, ColdFn, decode_answer, open_real
from llamanode import DecodeConfig, GrammarError, KVSession, StreamChunk

ASK = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PERSON = ASK.format("Write a JSON object describing a person.")
PREFIX = (("system", SYSTEM),)


def ask(session: KVSession, suffix: str) -> None:
    """Resident: the system prompt plus this suffix (drops whatever followed the prefix)."""
    session.ensure_prefix(session.prefix(PREFIX))
    session.prefill_suffix(session.suffix(suffix))


# -- sampling ----------------------------------------------------------------------------------


def test_seeded_sampling_repeats_and_different_seeds_differ(real: KVSession) -> None:
    def sample(session: KVSession, seed: int) -> tuple[int, ...]:
        ask(session, PERSON)
        return decode_answer(session, DecodeConfig(max_tokens=16, temperature=0.8, seed=seed)).token_ids

    first = sample(real, 7)
    assert sample(real, 7) == first
    with open_real() as fresh:
        assert sample(fresh, 7) == first, "a warm session sampled differently from a fresh one"
    others = {sample(real, seed) for seed in (1, 2, 3, 4)}
    assert len(others | {first}) >= 3, "different seeds should usually give different samples"


def test_json_schema_output_parses_and_validates(real: KVSession) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    ask(real, PERSON)
    answer = decode_answer(real, DecodeConfig(max_tokens=64, json_schema=schema))
    assert answer.stop_reason == "eog", f"the object did not close within 64 tokens: {answer.text!r}"
    value = json.loads(answer.text)
    jsonschema.validate(value, schema)


def test_gbnf_grammar_constrains_the_output(real: KVSession) -> None:
    ask(real, ASK.format("Is water wet? Answer yes or no."))
    answer = decode_answer(real, DecodeConfig(max_tokens=8, grammar='root ::= ("yes" | "no") "."'))
    assert answer.text in ("yes.", "no.")


@pytest.mark.parametrize(
    "config",
    [
        DecodeConfig(max_tokens=8, grammar="root ::= ("),
        DecodeConfig(max_tokens=8, grammar='start ::= "a"'),  # no root rule
        DecodeConfig(max_tokens=8, grammar="root ::= [a-"),
        DecodeConfig(max_tokens=8, json_schema={"type": "nonsense"}),
        DecodeConfig(max_tokens=8, json_schema={"$ref": "#/definitions/missing"}),
    ],
    ids=["unclosed-group", "no-root", "unclosed-class", "bad-type", "dangling-ref"],
)
def test_a_bad_grammar_raises_and_leaves_the_session_usable(real: KVSession, config: DecodeConfig) -> None:
    ask(real, SUFFIX)
    before = real.explain_context()
    with pytest.raises(GrammarError):
        real.decode(config)
    assert real.explain_context() == before
    answer = decode_answer(real, DecodeConfig(max_tokens=4))
    assert answer.generated_tokens >= 1


# -- stop strings and UTF-8 ------------------------------------------------------------------


def test_stop_string_across_a_token_boundary(real: KVSession, cold: ColdFn) -> None:
    full = cold(SEGMENTS, SUFFIX, GREEDY_32)
    pieces = [real._ctx.token_bytes(t) for t in full.token_ids]
    # a stop string made of the end of one token and the start of the next, far from the start
    at = next(
        i
        for i in range(3, len(pieces) - 1)
        if len(pieces[i]) >= 2 and pieces[i + 1] and pieces[i].isascii() and pieces[i + 1].isascii()
    )
    stop = (pieces[at][-2:] + pieces[at + 1][:1]).decode()
    expected = full.text[: full.text.find(stop)]
    assert expected, "the stop string should not match at the very start"

    real.ensure_prefix(real.prefix(SEGMENTS))
    real.prefill_suffix(real.suffix(SUFFIX))
    stopped = decode_answer(real, GREEDY_32.replace(stop=(stop,)))
    assert stopped.text == expected and stop not in stopped.text
    assert (stopped.stop_reason, stopped.finish_reason) == ("stop_string", "stop")
    # the same greedy tokens up to and including the one that completed the stop string
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert len(b"".join(pieces[: len(stopped.token_ids)]).decode()) >= len(expected) + len(stop)


def test_multibyte_characters_split_across_tokens_come_out_whole(real: KVSession) -> None:
    ask(real, ASK.format("Translate to Chinese: good morning, my friend. How are you today?"))
    chunks: list[StreamChunk] = list(real.decode(DecodeConfig(max_tokens=24)))
    answer_ids = [t for c in chunks for t in c.token_ids]
    pieces = [real._ctx.token_bytes(t) for t in answer_ids]
    assert any(not _is_utf8(p) for p in pieces), "no character was split across tokens: test is moot"
    sent, text = b"", ""
    for chunk in chunks:
        sent += b"".join(real._ctx.token_bytes(t) for t in chunk.token_ids)
        text += chunk.text
        # the text so far is every complete character of the bytes so far: no half characters
        assert text == _complete_prefix(sent)
    assert text == sent.decode("utf-8")
    assert "\ufffd" not in text and any(ord(ch) > 0x2E80 for ch in text)


def _complete_prefix(data: bytes) -> str:
    """The bytes minus an incomplete trailing character (at most 3 bytes), decoded strictly."""
    for cut in range(4):
        if _is_utf8(data[: len(data) - cut]):
            return data[: len(data) - cut].decode("utf-8")
    raise AssertionError(f"invalid UTF-8 from the model: {data!r}")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- stream lifecycle ------------------------------------------------------------------------


def test_closing_the_stream_early_stops_and_leaves_the_session_usable(real: KVSession, cold: ColdFn) -> None:
    real.ensure_prefix(real.prefix(SEGMENTS))
    real.prefill_suffix(real.suffix(SUFFIX))
    stream = real.decode(GREEDY_32)
    taken = [next(stream) for _ in range(3)]
    assert all(c.finish_reason is None for c in taken)
    generated = real.explain_context().generated_tokens
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    report = real.explain_context()
    assert report.generated_tokens == generated < 32
    status = real.ensure_prefix(real.prefix(SEGMENTS))
    assert status.byte_hash_hit and status.dropped_tokens == report.suffix_tokens + generated
    real.prefill_suffix(real.suffix(SUFFIX))
    again = decode_answer(real)
    assert again == cold(SEGMENTS, SUFFIX, GREEDY_32)
    assert again.text.startswith("".join(c.text for c in taken))
