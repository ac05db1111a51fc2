"""KVSession on the real default model: reuse never changes the answer, exact counts, refusals.

"Cold" is always a fresh open_session() with the same Config (see conftest.cold).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import (
    CALC,
    GREEDY_32,
    SEGMENTS,
    SUFFIX,
    SUFFIX_2,
    TEXT,
    Answer,
    ColdFn,
    decode_answer,
    open_real,
)
from llamanode import (
    Config,
    ContextOverflowError,
    InvalidInputError,
    KVSession,
    ManifestMismatchError,
    PrefixInput,
    SessionBusyError,
    SessionClosedError,
    SessionFatalError,
    SuffixInput,
    hash_token_ids,
)
from llamanode.kvsession import common_prefix_len

EDITED_CALC = CALC.replace("for _ in range(b):", "for _ in range(abs(b)):")
EDITED = tuple((name, EDITED_CALC if name == "calc" else text) for name, text in SEGMENTS)
SHORT = SEGMENTS[:3]  # without the last file
TINY = SEGMENTS[:2]  # for refusals and lifecycle: cheap to prefill
NEXT_TURN = "<|im_start|>user\nNow write a test for mul.<|im_end|>\n<|im_start|>assistant\n"


def tokens_of(session: KVSession, segments: tuple[tuple[str, str], ...]) -> list[int]:
    return session._ctx.tokenize("".join(text for _, text in segments), False)


def turn(session: KVSession, segments: tuple[tuple[str, str], ...], suffix: str) -> None:
    session.ensure_prefix(session.prefix(segments))
    session.prefill_suffix(session.suffix(suffix))


def test_the_test_texts_tokenize_stably_at_segment_seams(real: KVSession) -> None:
    whole = tokens_of(real, SEGMENTS)
    for k in range(1, len(SEGMENTS)):
        part = tokens_of(real, SEGMENTS[:k])
        assert whole[: len(part)] == part, f"seam after segment {k} re-merges tokens"
    assert 150 < len(whole) < 400


# -- reuse never changes the answer ------------------------------------------------------------


def test_new_suffix_on_a_resident_prefix_answers_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    first = decode_answer(real)
    assert first == cold(SEGMENTS, SUFFIX, GREEDY_32)
    assert first.generated_tokens >= 8, "too short an answer to compare"
    status = real.ensure_prefix(real.prefix(SEGMENTS))
    assert status.byte_hash_hit
    real.prefill_suffix(real.suffix(SUFFIX_2))
    assert decode_answer(real) == cold(SEGMENTS, SUFFIX_2, GREEDY_32)


def test_prefix_edited_in_the_middle_answers_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    decode_answer(real)
    status = real.ensure_prefix(real.prefix(EDITED))
    assert 0 < status.reused_tokens < status.prefix_tokens
    real.prefill_suffix(real.suffix(SUFFIX))
    assert decode_answer(real) == cold(EDITED, SUFFIX, GREEDY_32)


def test_shrunk_prefix_answers_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    decode_answer(real)
    status = real.ensure_prefix(real.prefix(SHORT))
    assert (status.prefilled_tokens, status.reused_tokens) == (0, status.prefix_tokens)
    real.prefill_suffix(real.suffix(SUFFIX))
    assert decode_answer(real) == cold(SHORT, SUFFIX, GREEDY_32)


def test_shrunk_prefix_without_suffix_refreshes_its_logits_exactly(real: KVSession, cold: ColdFn) -> None:
    real.ensure_prefix(real.prefix(SEGMENTS))
    status = real.ensure_prefix(real.prefix(SHORT))
    assert status.prefilled_tokens == 0
    assert decode_answer(real) == cold(SHORT, "", GREEDY_32)


def test_continuation_over_generated_text_answers_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    answer = decode_answer(real)
    before = real.explain_context()
    assert before.generated_tokens > 0
    stable = before.prefix_tokens + before.suffix_tokens
    history = (*SEGMENTS, ("turn1", SUFFIX + answer.text + "<|im_end|>\n"))
    status = real.ensure_prefix(real.prefix(history))
    # generated tokens came from single-token steps: never reused, re-prefilled in batches
    assert status.reused_tokens == stable
    assert status.prefilled_tokens == status.prefix_tokens - stable
    div = status.divergence
    assert div is not None and (div.cause, div.token_index, div.segment) == ("generated_tokens", stable, "turn1")
    real.prefill_suffix(real.suffix(NEXT_TURN))
    assert decode_answer(real) == cold(history, NEXT_TURN, GREEDY_32)


def test_exported_state_imported_elsewhere_answers_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    state = real.export_state()
    assert state.tokens == real.resident_tokens()
    with open_real() as other:
        other.import_state(state)
        report = other.explain_context()
        assert (report.resident_tokens, report.prefix_tokens) == (len(state.tokens), state.prefix_len)
        assert report.last_divergence is not None and report.last_divergence.cause == "restored"
        assert decode_answer(other) == cold(SEGMENTS, SUFFIX, GREEDY_32)
        assert other.ensure_prefix(other.prefix(SEGMENTS)).byte_hash_hit
    assert decode_answer(real) == cold(SEGMENTS, SUFFIX, GREEDY_32)


def test_state_with_generated_tokens_continues_like_a_cold_session(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    answer = decode_answer(real)
    state = real.export_state()
    assert state.generated > 0
    history = (*SEGMENTS, ("turn1", SUFFIX + answer.text + "<|im_end|>\n"))
    with open_real() as other:
        other.import_state(state)
        status = other.ensure_prefix(other.prefix(history))
        assert status.reused_tokens <= state.stable_len
        other.prefill_suffix(other.suffix(NEXT_TURN))
        assert decode_answer(other) == cold(history, NEXT_TURN, GREEDY_32)


# -- exact PrefixStatus counts ------------------------------------------------------------------


def test_prefix_status_counts_are_exact(real: KVSession, monkeypatch: pytest.MonkeyPatch) -> None:
    n_short, n_full, n_edit = (len(tokens_of(real, s)) for s in (SHORT, SEGMENTS, EDITED))
    num_ctx = real.num_ctx

    cold = real.ensure_prefix(real.prefix(SHORT))
    assert (cold.reused_tokens, cold.prefilled_tokens, cold.dropped_tokens) == (0, n_short, 0)
    assert (cold.prefix_tokens, cold.resident_tokens, cold.available_tokens) == (n_short, n_short, num_ctx - n_short)
    assert not cold.byte_hash_hit
    assert cold.stable_token_hash == hash_token_ids(tokens_of(real, SHORT))

    appended = real.ensure_prefix(real.prefix(SEGMENTS))
    assert (appended.reused_tokens, appended.prefilled_tokens, appended.dropped_tokens) == (
        n_short,
        n_full - n_short,
        0,
    )
    assert appended.prefix_tokens == appended.resident_tokens == n_full

    real.prefill_suffix(real.suffix(SUFFIX))
    decode_answer(real)
    resident = real.explain_context().resident_tokens
    assert resident > n_full

    lcp = common_prefix_len(tokens_of(real, SEGMENTS), tokens_of(real, EDITED))
    calls: list[str] = []
    original = real._ctx.tokenize

    def spy(text: str, add_bos: bool) -> list[int]:
        calls.append(text)
        return original(text, add_bos)

    monkeypatch.setattr(real._ctx, "tokenize", spy)
    unchanged = real.ensure_prefix(real.prefix(SEGMENTS))
    assert calls == [], "the byte-hash path must not tokenize"
    assert unchanged.byte_hash_hit
    assert (unchanged.reused_tokens, unchanged.prefilled_tokens, unchanged.dropped_tokens) == (
        n_full,
        0,
        resident - n_full,
    )
    assert unchanged.resident_tokens == n_full and unchanged.divergence is None
    assert unchanged.stable_byte_hash == appended.stable_byte_hash
    assert unchanged.stable_token_hash == appended.stable_token_hash

    edited = real.ensure_prefix(real.prefix(EDITED))
    assert len(calls) == 1
    assert lcp > len(tokens_of(real, SEGMENTS[:2]))
    assert (edited.reused_tokens, edited.prefilled_tokens, edited.dropped_tokens) == (lcp, n_edit - lcp, n_full - lcp)
    assert not edited.byte_hash_hit

    n_edit_short = len(original("".join(text for _, text in EDITED[:3]), False))
    shrunk = real.ensure_prefix(real.prefix(EDITED[:3]))
    assert (shrunk.reused_tokens, shrunk.prefilled_tokens, shrunk.dropped_tokens) == (
        n_edit_short,
        0,
        n_edit - n_edit_short,
    )
    assert shrunk.prefix_tokens == shrunk.resident_tokens == n_edit_short
    assert real.explain_context().last_prefix == shrunk


# -- divergence explanations --------------------------------------------------------------------


def test_divergence_names_cold_appended_edited_and_shrunk(real: KVSession) -> None:
    cold = real.ensure_prefix(real.prefix(SHORT)).divergence
    assert cold is not None and (cold.cause, cold.token_index, cold.segment) == ("cold", 0, "system")
    assert [s.state for s in real.explain_context().segments] == ["prefilled"] * 3

    appended = real.ensure_prefix(real.prefix(SEGMENTS)).divergence
    assert appended is not None and (appended.cause, appended.segment) == ("appended", "text")
    assert [s.state for s in real.explain_context().segments] == ["reused", "reused", "reused", "prefilled"]

    edited = real.ensure_prefix(real.prefix(EDITED)).divergence
    text = "".join(t for _, t in EDITED)
    edit_at = len(text[: text.index("abs(b)")].encode())
    assert edited is not None and (edited.cause, edited.segment, edited.byte_offset) == ("edited", "calc", edit_at)
    report = real.explain_context()
    assert report.last_divergence == edited
    rows = {s.name: s for s in report.segments}
    states = [rows[n].state for n in ("system", "repo_map", "calc", "text")]
    assert states == ["reused", "reused", "partial", "prefilled"]
    assert 0 < rows["calc"].reused_tokens < (rows["calc"].token_end or 0) - (rows["calc"].token_start or 0)
    assert rows["text"].reused_tokens == 0
    assert sum(s.reused_tokens for s in report.segments) == report.last_prefix.reused_tokens  # type: ignore[union-attr]
    assert [s.token_start for s in report.segments[1:]] == [s.token_end for s in report.segments[:-1]]
    assert report.segments[-1].token_end == report.prefix_tokens

    shrunk = real.ensure_prefix(real.prefix(EDITED[:3])).divergence
    assert shrunk is not None and shrunk.cause == "shrunk"
    assert [s.state for s in real.explain_context().segments] == ["reused"] * 3

    real.ensure_prefix(real.prefix(SEGMENTS))
    cut = TEXT.index("slug") + 2  # inside the token " slug": the new last token re-tokenizes
    mid_token = (*SEGMENTS[:3], ("text", TEXT[:cut]))
    status = real.ensure_prefix(real.prefix(mid_token))
    assert 0 < status.prefilled_tokens <= 2
    div = status.divergence
    assert div is not None and (div.cause, div.segment, div.token_index) == ("shrunk", "text", status.reused_tokens)


# -- overflow -----------------------------------------------------------------------------------


def test_prefix_overflow_raises_with_counts_and_changes_nothing(small: KVSession) -> None:
    long_text = (*SEGMENTS, ("more", CALC * 2))
    n_long = len(tokens_of(small, long_text))
    assert n_long > small.num_ctx == 256
    with pytest.raises(ContextOverflowError) as cold_info:
        small.ensure_prefix(small.prefix(long_text))
    err = cold_info.value
    assert (err.stage, err.resident_tokens, err.additional_tokens, err.num_ctx) == ("prefix", 0, n_long, 256)

    small.ensure_prefix(small.prefix(TINY))
    before = small.explain_context()
    with pytest.raises(ContextOverflowError) as warm_info:
        small.ensure_prefix(small.prefix(long_text))
    err = warm_info.value
    n_short = len(tokens_of(small, TINY))
    assert (err.stage, err.resident_tokens, err.additional_tokens, err.num_ctx) == (
        "prefix",
        n_short,
        n_long - n_short,
        256,
    )
    assert small.explain_context() == before


def test_suffix_overflow_raises_with_counts_and_changes_nothing(small: KVSession) -> None:
    small.ensure_prefix(small.prefix(TINY))
    before = small.explain_context()
    suffix = CALC * 3
    n_suffix = len(small._ctx.tokenize(suffix, False))
    with pytest.raises(ContextOverflowError) as info:
        small.prefill_suffix(small.suffix(suffix))
    err = info.value
    assert (err.stage, err.resident_tokens, err.additional_tokens, err.num_ctx) == (
        "suffix",
        before.resident_tokens,
        n_suffix,
        256,
    )
    assert small.explain_context() == before


def test_decode_overflow_raises_with_counts_and_changes_nothing(small: KVSession) -> None:
    turn(small, TINY, SUFFIX)
    before = small.explain_context()
    room = 256 - before.resident_tokens
    with pytest.raises(ContextOverflowError) as info:
        small.decode(GREEDY_32.replace(max_tokens=room + 1))
    err = info.value
    assert (err.stage, err.resident_tokens, err.additional_tokens, err.num_ctx) == (
        "decode",
        before.resident_tokens,
        room + 1,
        256,
    )
    assert small.explain_context() == before
    assert decode_answer(small, GREEDY_32.replace(max_tokens=4)).generated_tokens >= 1


# -- manifest refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["model_digest", "runtime_digest", "tokenizer_digest"])
def test_a_manifest_of_another_model_or_runtime_is_refused(real: KVSession, field: str) -> None:
    real.ensure_prefix(real.prefix(TINY))
    before = real.explain_context()
    good = real.prefix(TINY)
    bad = PrefixInput(good.text, replace(good.manifest, **{field: "0" * 64}))
    with pytest.raises(ManifestMismatchError) as info:
        real.ensure_prefix(bad)
    assert info.value.field == field and field in str(info.value)
    assert real.explain_context() == before


@pytest.mark.parametrize(("field", "value"), [("template_digest", "another template"), ("add_bos", True)])
def test_a_changed_rendering_field_forces_a_full_prefill(real: KVSession, field: str, value: object) -> None:
    real.ensure_prefix(real.prefix(TINY))
    good = real.prefix(TINY)
    changed = PrefixInput(good.text, replace(good.manifest, **{field: value}))
    status = real.ensure_prefix(changed)
    expected = real._ctx.tokenize(good.text, field == "add_bos")
    assert len(expected) == len(tokens_of(real, TINY)) + (field == "add_bos")
    assert (status.reused_tokens, status.prefilled_tokens) == (0, len(expected))
    assert status.stable_token_hash == hash_token_ids(expected)
    assert status.divergence is not None and status.divergence.cause == "manifest_changed"
    assert field in status.divergence.detail
    assert status.manifest_digest == changed.manifest.digest != good.manifest.digest


def test_a_suffix_under_another_manifest_is_refused(real: KVSession) -> None:
    with pytest.raises(ManifestMismatchError) as info:
        real.prefill_suffix(real.suffix(SUFFIX))
    assert info.value.field == "prefix"
    real.ensure_prefix(real.prefix(TINY))
    before = real.explain_context()
    base = real.suffix(SUFFIX)
    for field, value in (("template_digest", "x"), ("add_bos", True), ("model_digest", "0" * 64)):
        with pytest.raises(ManifestMismatchError) as info:
            real.prefill_suffix(SuffixInput(SUFFIX, replace(base.manifest, **{field: value})))
        assert info.value.field == field
    assert real.explain_context() == before


def test_segments_that_do_not_tile_the_text_are_refused(real: KVSession) -> None:
    real.ensure_prefix(real.prefix(TINY))
    before = real.explain_context()
    good = real.prefix(TINY)
    same_length = good.text.replace("add", "sum", 1)
    for text in (good.text + "x", good.text[:-1], same_length):
        with pytest.raises(ManifestMismatchError) as info:
            real.ensure_prefix(PrefixInput(text, good.manifest))
        assert info.value.field == "segments"
    assert real.explain_context() == before


# -- lifecycle ----------------------------------------------------------------------------------


def test_every_call_on_a_closed_session_raises(model_keeper: KVSession) -> None:
    with open_real() as donor:
        donor.ensure_prefix(donor.prefix(TINY))
        state = donor.export_state()
    session = open_real()
    session.ensure_prefix(session.prefix(TINY))
    prefix, suffix = session.prefix(TINY), session.suffix(SUFFIX)
    session.close()
    session.close()  # idempotent
    calls = {
        "ensure_prefix": lambda: session.ensure_prefix(prefix),
        "prefill_suffix": lambda: session.prefill_suffix(suffix),
        "decode": lambda: session.decode(GREEDY_32),
        "export_state": session.export_state,
        "import_state": lambda: session.import_state(state),
    }
    for name, call in calls.items():
        with pytest.raises(SessionClosedError):
            call()
            pytest.fail(f"{name} did not raise")
    assert session.explain_context().closed
    assert donor.explain_context().closed


def test_a_closed_session_never_touches_the_model(model_keeper: KVSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the last session of a model frees it: later calls must not reach native code."""
    from llamanode.backends.llamacpp import context, model

    session = open_real()
    kv = session.kv_bytes()
    assert kv > 0
    session.close()

    def freed(*args: object) -> None:
        raise AssertionError("the model was used after close")

    monkeypatch.setattr(context, "kv_bytes_per_token", freed)
    monkeypatch.setattr(model, "_piece", freed)
    assert session.kv_bytes() == kv
    with pytest.raises(SessionClosedError):
        session.tokenize("hello")
    assert session.explain_context().closed


def test_a_backend_failure_makes_the_session_fatal(real: KVSession, monkeypatch: pytest.MonkeyPatch) -> None:
    real.ensure_prefix(real.prefix(TINY))

    def broken(tokens: object, start: int) -> None:
        raise SessionFatalError("llama_decode returned -1")

    monkeypatch.setattr(real._ctx, "prefill", broken)
    with pytest.raises(SessionFatalError):
        real.ensure_prefix(real.prefix(SEGMENTS))
    monkeypatch.undo()
    assert real.explain_context().fatal
    calls = {
        "ensure_prefix": lambda: real.ensure_prefix(real.prefix(TINY)),
        "prefill_suffix": lambda: real.prefill_suffix(real.suffix(SUFFIX)),
        "decode": lambda: real.decode(GREEDY_32),
        "export_state": real.export_state,
    }
    for name, call in calls.items():
        with pytest.raises(SessionFatalError):
            call()
            pytest.fail(f"{name} did not raise")
    real.close()
    assert real.explain_context().closed


def test_decode_before_a_prefix_is_invalid_input(real: KVSession) -> None:
    with pytest.raises(InvalidInputError):
        real.decode(GREEDY_32)


# -- concurrency --------------------------------------------------------------------------------


def test_a_second_thread_waits_for_the_open_stream(real: KVSession, cold: ColdFn) -> None:
    turn(real, SEGMENTS, SUFFIX)
    stream = real.decode(GREEDY_32)
    first = next(stream)
    assert first.finish_reason is None
    results: list[object] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        try:
            results.append(real.ensure_prefix(real.prefix(SEGMENTS)))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    worker = threading.Thread(target=other)
    worker.start()
    started.wait(5)
    worker.join(0.5)
    assert worker.is_alive() and results == [], "ensure_prefix ran while a stream was open"
    rest = list(stream)  # finishing the stream releases the session
    worker.join(60)
    assert not worker.is_alive()
    status = results[0]
    assert not isinstance(status, Exception), status
    assert status.byte_hash_hit  # type: ignore[union-attr]
    chunks = [first, *rest]
    assert "".join(c.text for c in chunks) == cold(SEGMENTS, SUFFIX, GREEDY_32).text


def test_reentry_from_the_streaming_thread_raises_busy(real: KVSession) -> None:
    turn(real, TINY, SUFFIX)
    stream = real.decode(GREEDY_32)
    next(stream)
    before = real.explain_context()
    for call in (
        lambda: real.ensure_prefix(real.prefix(TINY)),
        lambda: real.prefill_suffix(real.suffix(SUFFIX)),
        lambda: real.decode(GREEDY_32),
        real.export_state,
    ):
        with pytest.raises(SessionBusyError):
            call()
    assert real.explain_context() == before
    stream.close()
    assert real.ensure_prefix(real.prefix(TINY)).byte_hash_hit


# -- long prefixes (slow) -----------------------------------------------------------------------


def _long_segments() -> tuple[tuple[str, str], ...]:
    """About 1,500 tokens of real source code in four file segments."""
    import llamanode

    src = Path(llamanode.__file__).parent
    files = ("config.py", "manifest.py", "residency.py", "textstream.py")
    body = tuple((name, f"\nFile {name}:\n```python\n{(src / name).read_text()[:1400]}\n```\n") for name in files)
    return (("system", SEGMENTS[0][1]), ("user", "<|im_start|>user\nHere is some code.\n"), *body)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        Config(num_ctx=4096, num_threads=1, num_batch=512),
        Config(num_ctx=4096, num_threads=1, num_batch=256, num_ubatch=128),
        Config(num_ctx=4096, num_threads=1, kv_cache_type="q8_0", flash_attn=True),
    ],
    ids=["f16", "f16-small-ubatch", "q8_0-flash-attn"],
)
def test_long_prefix_edits_answer_like_a_cold_session(model_keeper: KVSession, config: Config) -> None:
    segments = _long_segments()
    middle = segments[3][0]
    text = segments[3][1]
    cut = text.index("\n", len(text) // 2) + 1
    edited = (*segments[:3], (middle, text[:cut] + "# edited here\n" + text[cut:]), *segments[4:])

    def cold(segs: tuple[tuple[str, str], ...], suffix: str) -> Answer:
        with open_real(config) as fresh:
            fresh.ensure_prefix(fresh.prefix(segs))
            fresh.prefill_suffix(fresh.suffix(suffix))
            return decode_answer(fresh)

    with open_real(config) as warm:
        status = warm.ensure_prefix(warm.prefix(segments))
        assert 1200 < status.prefix_tokens < 2500
        warm.prefill_suffix(warm.suffix(SUFFIX))
        assert decode_answer(warm) == cold(segments, SUFFIX)

        status = warm.ensure_prefix(warm.prefix(edited))
        assert 0 < status.reused_tokens < status.prefix_tokens - 200
        assert status.divergence is not None
        assert (status.divergence.cause, status.divergence.segment) == ("edited", middle)
        warm.prefill_suffix(warm.suffix(SUFFIX_2))
        assert decode_answer(warm) == cold(edited, SUFFIX_2)
