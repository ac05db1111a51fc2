"""KVSession's contract on the toy KVContext (tests/fakes.py): cheap, so hypothesis runs many cases."""

from __future__ import annotations

import gc
import hashlib
import math
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from fakes import BYTE0, FakeContext, FakeSampler, fake_session
from llamanode import (
    Config,
    ConfigError,
    ContextManifest,
    ContextOverflowError,
    DecodeConfig,
    GrammarError,
    InvalidInputError,
    KVSession,
    PrefillProgress,
    PrefixInput,
    SessionBusyError,
    SessionFatalError,
    SnapshotError,
    SnapshotMismatchError,
    StreamChunk,
    hash_token_ids,
)
from llamanode.kvsession import chunk_sizes, common_prefix_len


def toks(text: str) -> list[int]:
    return [BYTE0 + b for b in text.encode("utf-8")]


def run_decode(session: KVSession, config: DecodeConfig) -> tuple[str, tuple[int, ...], str, int]:
    chunks = list(session.decode(config))
    report = chunks[-1].report
    assert report is not None
    return (
        "".join(c.text for c in chunks),
        tuple(t for c in chunks for t in c.token_ids),
        report.stop_reason,
        report.generated_tokens,
    )


def no_single_token_batches(ctx: FakeContext) -> None:
    assert ctx.small_batches_after_start() == [], "a prefill micro-batch of one token after position 0"
    assert all(b.size <= ctx.n_batch for b in ctx.batches)


# -- chunking ----------------------------------------------------------------------------------


@given(n=st.integers(1, 3000), batch=st.integers(3, 700))
def test_chunk_sizes_tile_without_singletons(n: int, batch: int) -> None:
    sizes = chunk_sizes(n, batch)
    assert sum(sizes) == n
    assert all(1 <= s <= batch for s in sizes)
    assert len(sizes) == math.ceil(n / batch)
    if n > 1:
        assert min(sizes) >= 2


@given(num_batch=st.integers(2, 12), num_ubatch=st.integers(2, 12))
def test_config_batches_never_force_a_single_token_chunk(num_batch: int, num_ubatch: int) -> None:
    try:
        config = Config(num_batch=num_batch, num_ubatch=num_ubatch)
    except ConfigError:
        assume(False)
        return
    step = min(config.num_batch, config.num_ubatch)
    for n in range(2, 3 * step + 2):
        assert min(chunk_sizes(n, step)) >= 2


@given(n=st.integers(1, 200), num_batch=st.integers(3, 32), data=st.data())
def test_cold_prefill_is_chunked_by_batch(n: int, num_batch: int, data: st.DataObject) -> None:
    num_ubatch = data.draw(st.integers(3, num_batch))
    session, ctx = fake_session(num_ctx=512, num_batch=num_batch, num_ubatch=num_ubatch)
    status = session.ensure_prefix(session.prefix((("a", "x" * n),)))
    assert status.prefilled_tokens == n
    assert sum(b.size for b in ctx.batches) == n
    assert [b.start for b in ctx.batches] == [sum(b.size for b in ctx.batches[:i]) for i in range(len(ctx.batches))]
    assert len(ctx.batches) == math.ceil(n / min(num_batch, num_ubatch))
    no_single_token_batches(ctx)


@given(n=st.integers(2, 60), extra=st.integers(1, 40), num_batch=st.integers(3, 16), data=st.data())
def test_append_and_suffix_never_prefill_one_token(n: int, extra: int, num_batch: int, data: st.DataObject) -> None:
    num_ubatch = data.draw(st.integers(3, num_batch))
    session, ctx = fake_session(num_ctx=512, num_batch=num_batch, num_ubatch=num_ubatch)
    session.ensure_prefix(session.prefix((("a", "p" * n),)))
    status = session.ensure_prefix(session.prefix((("a", "p" * n), ("b", "q" * extra))))
    expected_reused = n - 1 if extra == 1 else n
    assert status.reused_tokens == expected_reused
    assert status.prefilled_tokens == n + extra - expected_reused
    session.prefill_suffix(session.suffix("s" * data.draw(st.integers(1, 5))))
    run_decode(session, DecodeConfig(max_tokens=3))
    no_single_token_batches(ctx)


def test_single_token_prefix_at_position_zero_is_allowed() -> None:
    session, ctx = fake_session()
    status = session.ensure_prefix(session.prefix((("a", "x"),)))
    assert status.prefilled_tokens == 1
    assert [(b.start, b.size) for b in ctx.batches] == [(0, 1)]


def test_single_token_suffix_takes_its_predecessor_along() -> None:
    session, ctx = fake_session()
    session.ensure_prefix(session.prefix((("a", "hello"),)))
    status = session.prefill_suffix(session.suffix("!"))
    assert status.suffix_tokens == 1 and status.resident_tokens == 6
    assert (ctx.batches[-1].start, ctx.batches[-1].size) == (4, 2)
    assert session.explain_context().suffix_tokens == 1


def test_progress_is_reported_per_chunk() -> None:
    session, _ = fake_session(num_batch=8)
    seen: list[PrefillProgress] = []
    session.ensure_prefix(session.prefix((("a", "x" * 20),)), on_progress=seen.append)
    session.prefill_suffix(session.suffix("y" * 9), on_progress=seen.append)
    assert [(p.stage, p.done_tokens, p.total_tokens) for p in seen] == [
        ("prefix", 8, 20),
        ("prefix", 16, 20),
        ("prefix", 20, 20),
        ("suffix", 7, 9),  # never a last chunk of one
        ("suffix", 9, 9),
    ]
    assert all(p.elapsed_s >= 0 for p in seen)


class Cancelled(Exception):
    pass


def test_a_prefill_cancelled_from_progress_leaves_nothing_to_decode() -> None:
    session, _ = fake_session(num_batch=8)
    prefix = session.prefix((("a", "x" * 20),))

    def cancel(progress: PrefillProgress) -> None:
        if progress.done_tokens >= 16:
            raise Cancelled

    with pytest.raises(Cancelled):
        session.ensure_prefix(prefix, on_progress=cancel)
    assert session.explain_context().manifest is None
    with pytest.raises(InvalidInputError):
        session.decode(DecodeConfig(max_tokens=3))
    with pytest.raises(InvalidInputError):
        session.export_state()
    status = session.ensure_prefix(prefix)
    assert (status.prefix_tokens, status.resident_tokens) == (20, 20)
    cold, _ = fake_session(num_batch=8)
    cold.ensure_prefix(prefix)
    assert run_decode(session, DecodeConfig(max_tokens=8)) == run_decode(cold, DecodeConfig(max_tokens=8))


def test_the_next_ensure_prefix_resumes_a_stopped_prefill_token_by_token() -> None:
    session, ctx = fake_session(num_batch=8)
    prefix = session.prefix((("a", "x" * 20), ("b", "y" * 20)))

    def cancel(progress: PrefillProgress) -> None:
        if progress.done_tokens >= 16:
            raise Cancelled

    with pytest.raises(Cancelled):
        session.ensure_prefix(prefix, on_progress=cancel)
    report = session.explain_context()
    assert (report.manifest, report.resident_tokens, report.prefix_tokens, report.suffix_tokens) == (None, 16, 16, 0)
    status = session.ensure_prefix(prefix)
    assert (status.reused_tokens, status.prefilled_tokens, status.prefix_tokens) == (16, 24, 40)
    assert status.divergence is not None
    assert (status.divergence.cause, status.divergence.token_index, status.divergence.segment) == ("resumed", 16, "a")
    cold, _ = fake_session(num_batch=8)
    cold.ensure_prefix(prefix)
    assert run_decode(session, DecodeConfig(max_tokens=8)) == run_decode(cold, DecodeConfig(max_tokens=8))
    no_single_token_batches(ctx)


def test_another_prefix_reuses_what_matches_of_a_stopped_prefill_and_says_where_it_differs() -> None:
    session, ctx = fake_session(num_batch=8)

    def cancel(progress: PrefillProgress) -> None:
        if progress.done_tokens >= 24:
            raise Cancelled

    with pytest.raises(Cancelled):
        session.ensure_prefix(session.prefix((("a", "x" * 20), ("b", "y" * 20))), on_progress=cancel)
    other = session.prefix((("a", "x" * 20), ("b", "yz" * 10)))
    status = session.ensure_prefix(other)
    assert (status.reused_tokens, status.prefilled_tokens) == (21, 19)
    assert status.divergence is not None
    assert (status.divergence.cause, status.divergence.segment, status.divergence.byte_offset) == ("edited", "b", 21)
    cold, _ = fake_session(num_batch=8)
    cold.ensure_prefix(other)
    assert run_decode(session, DecodeConfig(max_tokens=8)) == run_decode(cold, DecodeConfig(max_tokens=8))
    no_single_token_batches(ctx)


# -- the byte-hash path and exact counts ---------------------------------------------------------


def test_byte_hash_hit_makes_no_tokenizer_call_and_drops_suffix_and_generated() -> None:
    session, ctx = fake_session()
    prefix = session.prefix((("sys", "system text "), ("file", "def f(): pass\n")))
    session.ensure_prefix(prefix)
    session.prefill_suffix(session.suffix("question?"))
    _, _, reason, produced = run_decode(session, DecodeConfig(max_tokens=5))
    before = session.explain_context()
    calls = ctx.tokenize_calls
    status = session.ensure_prefix(prefix)
    assert ctx.tokenize_calls == calls
    assert status.byte_hash_hit
    n = len(toks(prefix.text))
    assert (status.reused_tokens, status.prefilled_tokens, status.prefix_tokens, status.resident_tokens) == (n, 0, n, n)
    assert status.dropped_tokens == before.resident_tokens - n
    assert status.divergence is None
    after = session.explain_context()
    assert (after.suffix_tokens, after.generated_tokens) == (0, 0)
    assert all(s.state == "reused" for s in after.segments)
    assert reason in ("max_tokens", "eog", "stop_string") and produced >= 1


def test_same_text_other_segmentation_is_not_a_byte_hash_hit_but_reuses_everything() -> None:
    session, ctx = fake_session()
    session.ensure_prefix(session.prefix((("a", "abc"), ("b", "def"))))
    calls = ctx.tokenize_calls
    status = session.ensure_prefix(session.prefix((("a", "abcd"), ("b", "ef"))))
    assert ctx.tokenize_calls == calls + 1
    assert not status.byte_hash_hit
    assert (status.reused_tokens, status.prefilled_tokens, status.dropped_tokens) == (6, 0, 0)


def test_stale_logits_are_refreshed_after_a_shrink() -> None:
    session, ctx = fake_session()
    session.ensure_prefix(session.prefix((("a", "abcdef"), ("b", "ghij"))))
    status = session.ensure_prefix(session.prefix((("a", "abcdef"),)))
    assert (status.reused_tokens, status.prefilled_tokens, status.dropped_tokens) == (6, 0, 4)
    assert status.divergence is not None and status.divergence.cause == "shrunk"
    warm = run_decode(session, DecodeConfig(max_tokens=8))  # the toy sampler asserts live logits
    cold, _ = fake_session()
    cold.ensure_prefix(cold.prefix((("a", "abcdef"),)))
    assert run_decode(cold, DecodeConfig(max_tokens=8)) == warm
    no_single_token_batches(ctx)


# -- the differential property: warm == cold, exact counts, residency -----------------------------

ALPHABET = "ab \né€🙂xyST"
seg_text = st.text(alphabet=ALPHABET, min_size=1, max_size=10)


@dataclass
class Model:
    """What the test expects to be resident in the warm session."""

    text: str | None = None
    manifest: ContextManifest | None = None
    batched: list[int] = field(default_factory=list)  # tokens computed by batched prefill
    resident_ids: list[int] = field(default_factory=list)  # batched + generated by decode steps


def edit(data: st.DataObject, segments: list[tuple[str, str]], last: tuple[str, str] | None) -> list[tuple[str, str]]:
    action = data.draw(st.sampled_from(["same", "append", "edit", "shrink", "continue", "replace_all"]))
    segs = list(segments)
    if action == "append" or not segs:
        segs.append((f"s{len(segs)}", data.draw(seg_text)))
    elif action == "edit":
        i = data.draw(st.integers(0, len(segs) - 1))
        name, text = segs[i]
        at = data.draw(st.integers(0, len(text)))
        segs[i] = (name, text[:at] + data.draw(seg_text) + text[at + 1 :])
    elif action == "shrink":
        segs = segs[: data.draw(st.integers(1, len(segs)))]
        name, text = segs[-1]
        if text:
            segs[-1] = (name, text[: data.draw(st.integers(1, len(text)))])
    elif action == "continue" and last is not None:
        segs.append(last)
    elif action == "replace_all":
        segs = [("fresh", data.draw(seg_text))]
    return segs


decode_configs = st.builds(
    DecodeConfig,
    max_tokens=st.integers(1, 12),
    temperature=st.sampled_from([0.0, 0.0, 0.7]),
    seed=st.integers(0, 1000),
    stop=st.sampled_from([(), ("S",), ("b ", "€")]),
)


@settings(max_examples=200)
@given(data=st.data(), num_batch=st.integers(3, 9), add_bos=st.booleans())
def test_reuse_never_changes_the_answer_and_counts_are_exact(
    data: st.DataObject, num_batch: int, add_bos: bool
) -> None:
    num_ubatch = data.draw(st.integers(3, num_batch))
    warm, ctx = fake_session(num_ctx=1024, num_batch=num_batch, num_ubatch=num_ubatch, add_bos=add_bos)
    model = Model()
    segments: list[tuple[str, str]] = []
    last: tuple[str, str] | None = None
    for _turn in range(data.draw(st.integers(1, 5))):
        segments = edit(data, segments, last)
        prefix = warm.prefix(tuple(segments))
        tokens = ([1] if add_bos else []) + toks(prefix.text)
        calls = ctx.tokenize_calls

        status = warm.ensure_prefix(prefix)

        hit = model.text == prefix.text and model.manifest == prefix.manifest
        assert status.byte_hash_hit == hit
        if hit:
            assert ctx.tokenize_calls == calls
            expected = len(tokens)
        else:
            expected = common_prefix_len(model.batched, tokens)
            if len(tokens) - expected == 1 and expected > 0:
                expected -= 1
        assert status.reused_tokens == expected
        assert status.prefilled_tokens == len(tokens) - expected
        assert status.dropped_tokens == len(model.resident_ids) - expected
        blocked = (
            not hit
            and model.text is not None
            and expected == len(model.batched) < len(model.resident_ids)
            and expected < len(tokens)
            and model.resident_ids[expected] == tokens[expected]
        )
        cause = status.divergence.cause if status.divergence else None
        event(f"divergence: {cause}")
        assert (cause == "generated_tokens") == blocked, status.divergence
        assert status.prefix_tokens == status.resident_tokens == len(tokens)
        assert status.available_tokens == 1024 - len(tokens)
        assert status.stable_token_hash == hash_token_ids(tokens)
        assert status.stable_byte_hash == hashlib.sha256(prefix.text.encode()).hexdigest()
        check_residency(warm, prefix.text, segments, expected, add_bos)

        suffix = data.draw(st.text(alphabet=ALPHABET, min_size=0, max_size=6))
        sstatus = warm.prefill_suffix(warm.suffix(suffix))
        assert sstatus.suffix_tokens == len(toks(suffix))
        assert sstatus.resident_tokens == len(tokens) + len(toks(suffix))

        config = data.draw(decode_configs)
        answer = run_decode(warm, config)
        text, ids, reason, produced = answer
        assert len(ids) == produced, "every generated token id is streamed exactly once"
        if reason != "stop_string":
            assert b"".join(ctx.token_bytes(t) for t in ids).decode("utf-8", "replace") == text
        stepped = produced if reason == "eog" else produced - 1
        report = warm.explain_context()
        assert report.generated_tokens == stepped
        assert report.resident_tokens == len(tokens) + len(toks(suffix)) + stepped

        cold, cold_ctx = fake_session(num_ctx=1024, num_batch=num_batch, num_ubatch=num_ubatch, add_bos=add_bos)
        cold.ensure_prefix(prefix)
        cold.prefill_suffix(cold.suffix(suffix))
        assert run_decode(cold, config) == answer, "reuse changed the answer"
        no_single_token_batches(ctx)
        no_single_token_batches(cold_ctx)

        batched = tokens + toks(suffix)
        model = Model(prefix.text, prefix.manifest, batched, batched + list(ids[:stepped]))
        assert len(model.resident_ids) == report.resident_tokens
        last = (f"turn{_turn}", suffix + text)


def check_residency(session: KVSession, text: str, segments: list[tuple[str, str]], reused: int, add_bos: bool) -> None:
    """Byte-level tokens map 1:1 to bytes, so every segment's token range is known exactly."""
    report = session.explain_context()
    assert [s.name for s in report.segments] == [name for name, _ in segments]
    at = 0
    bos = 1 if add_bos else 0
    for row, (name, seg) in zip(report.segments, segments, strict=True):
        n = len(seg.encode())
        assert (row.name, row.byte_start, row.byte_len) == (name, at, n)
        t0 = at + bos if at else 0
        t1 = at + n + bos if at + n else 0
        assert (row.token_start, row.token_end) == (t0, t1)
        kept = max(0, min(reused, t1) - t0)
        assert row.reused_tokens == kept
        assert row.state == ("reused" if kept == t1 - t0 else "partial" if kept else "prefilled")
        at += n
    assert at == len(text.encode())


def test_continuation_over_generated_text_is_explained_as_generated_tokens() -> None:
    for word in ("hello ", "hi ", "hey ", "yo ", "ahoy ", "hallo ", "salut "):  # the toy model is deterministic
        session, _ = fake_session(eos_every=0)
        segments = (("a", word), ("b", "world "))
        session.ensure_prefix(session.prefix(segments))
        session.prefill_suffix(session.suffix("Q: "))
        text, ids, _, _ = run_decode(session, DecodeConfig(max_tokens=6))
        if ids[0] == toks(text)[0]:  # the first generated token is a plain byte
            break
    else:
        pytest.fail("no greeting made the toy model start with a plain byte")
    status = session.ensure_prefix(session.prefix((*segments, ("turn", "Q: " + text))))
    stable = len(toks(word + "world Q: "))
    assert (status.reused_tokens, status.prefilled_tokens) == (stable, len(toks(text)))
    div = status.divergence
    assert div is not None and (div.cause, div.token_index, div.segment, div.byte_offset) == (
        "generated_tokens",
        stable,
        "turn",
        stable,
    )
    # new text after the suffix that is not the generated text is an ordinary append
    session.prefill_suffix(session.suffix("Q: "))
    run_decode(session, DecodeConfig(max_tokens=6))
    other = session.ensure_prefix(session.prefix((*segments, ("turn", "Q: " + text + "Q: ~~"))))
    assert other.divergence is not None and other.divergence.cause == "appended"


# -- state export / import ----------------------------------------------------------------------


def test_export_import_moves_a_state_exactly() -> None:
    src, _ = fake_session()
    prefix = src.prefix((("a", "some prefix "), ("b", "more text")))
    src.ensure_prefix(prefix)
    src.prefill_suffix(src.suffix("go:"))
    state = src.export_state()
    dst, dst_ctx = fake_session()
    dst.import_state(state)
    report = dst.explain_context()
    assert report.last_divergence is not None and report.last_divergence.cause == "restored"
    assert (report.resident_tokens, report.prefix_tokens) == (len(state.tokens), state.prefix_len)
    warm = run_decode(dst, DecodeConfig(max_tokens=10))
    assert warm == run_decode(src, DecodeConfig(max_tokens=10))
    no_single_token_batches(dst_ctx)
    calls = dst_ctx.tokenize_calls
    assert dst.ensure_prefix(prefix).byte_hash_hit
    assert dst_ctx.tokenize_calls == calls


def test_import_of_another_model_is_refused_before_touching_the_context() -> None:
    src, _ = fake_session()
    src.ensure_prefix(src.prefix((("a", "abc"),)))
    state = src.export_state()
    dst, dst_ctx = fake_session()
    dst.ensure_prefix(dst.prefix((("x", "resident"),)))
    before = dst.explain_context()
    with pytest.raises(SnapshotMismatchError) as info:
        dst.import_state(replace(state, model_digest="other"))
    assert info.value.field == "model_digest"
    with pytest.raises(SnapshotMismatchError):
        dst.import_state(replace(state, manifest=replace(state.manifest, tokenizer_digest="other")))
    assert dst.explain_context() == before
    assert len(dst_ctx.kv) == before.resident_tokens


def test_a_refused_state_leaves_the_session_empty_and_usable() -> None:
    src, _ = fake_session()
    src.ensure_prefix(src.prefix((("a", "abc"),)))
    state = replace(src.export_state(), kv=b"not a state")
    dst, dst_ctx = fake_session()
    dst.ensure_prefix(dst.prefix((("x", "resident"),)))
    with pytest.raises(SnapshotError):
        dst.import_state(state)
    report = dst.explain_context()
    assert (report.resident_tokens, report.manifest, dst_ctx.kv) == (0, None, [])
    assert dst.ensure_prefix(dst.prefix((("x", "resident"),))).prefilled_tokens == 8


# -- errors and lifecycle on the toy model ------------------------------------------------------


def test_bad_grammar_raises_at_decode_call_and_session_stays_usable() -> None:
    session, _ = fake_session()
    session.ensure_prefix(session.prefix((("a", "abc"),)))
    before = session.explain_context()
    with pytest.raises(GrammarError):
        session.decode(DecodeConfig(max_tokens=5, grammar="no rules"))
    assert session.explain_context() == before
    assert run_decode(session, DecodeConfig(max_tokens=3))[3] >= 1


def test_decode_until_the_context_is_full_ends_with_an_overflow_chunk() -> None:
    session, ctx = fake_session(num_ctx=32, eos_every=0)
    session.ensure_prefix(session.prefix((("a", "0123456789"),)))
    chunks = list(session.decode(DecodeConfig(max_tokens=None)))
    final = chunks[-1]
    assert final.report is not None and final.report.stop_reason == "context_full"
    assert final.finish_reason == "error" and isinstance(final.error, ContextOverflowError)
    assert final.error.stage == "decode" and final.error.num_ctx == 32
    report = session.explain_context()
    assert report.resident_tokens == 32 == len(ctx.kv) and report.available_tokens == 0
    assert sum(len(c.token_ids) for c in chunks) == final.report.generated_tokens == 32 - 10 + 1
    assert not report.fatal
    assert session.ensure_prefix(session.prefix((("a", "0123456789"),))).byte_hash_hit


def test_decode_max_tokens_may_fill_the_context_exactly() -> None:
    session, _ = fake_session(num_ctx=32, eos_every=0)
    session.ensure_prefix(session.prefix((("a", "0123456789"),)))
    with pytest.raises(ContextOverflowError) as info:
        session.decode(DecodeConfig(max_tokens=23))
    assert (info.value.resident_tokens, info.value.additional_tokens) == (10, 23)
    _, ids, reason, produced = run_decode(session, DecodeConfig(max_tokens=22))
    assert (reason, produced, len(ids)) == ("max_tokens", 22, 22)


@pytest.mark.parametrize("start", [False, True])
def test_an_abandoned_stream_frees_its_sampler(start: bool) -> None:
    session, ctx = fake_session(eos_every=0)
    session.ensure_prefix(session.prefix((("a", "abcdef"),)))
    samplers: list[FakeSampler] = []
    original = ctx.new_sampler

    def recording(config: DecodeConfig) -> FakeSampler:
        samplers.append(original(config))
        return samplers[-1]

    ctx.new_sampler = recording  # type: ignore[method-assign]
    stream = session.decode(DecodeConfig(max_tokens=5))
    if start:
        next(stream)
    del stream
    gc.collect()
    assert samplers and samplers[0].closed
    assert run_decode(session, DecodeConfig(max_tokens=5))[3] == 5


def test_decode_before_any_prefix_is_invalid_input() -> None:
    session, _ = fake_session()
    with pytest.raises(InvalidInputError):
        session.decode()


def test_lone_surrogate_is_invalid_input_and_changes_nothing() -> None:
    session, _ = fake_session()
    session.ensure_prefix(session.prefix((("a", "abc"),)))
    before = session.explain_context()
    bad = PrefixInput("ab\ud800", session.manifest())
    with pytest.raises(InvalidInputError):
        session.ensure_prefix(bad)
    with pytest.raises(InvalidInputError):
        session.prefill_suffix(session.suffix("\udfff"))
    assert session.explain_context() == before


def test_backend_failure_mid_decode_ends_the_stream_with_an_error_and_poisons_the_session() -> None:
    session, ctx = fake_session()
    session.ensure_prefix(session.prefix((("a", "abcdef"),)))

    def broken(token: int, position: int) -> None:
        raise SessionFatalError("device lost")

    ctx.step = broken  # type: ignore[method-assign]
    chunks: list[StreamChunk] = list(session.decode(DecodeConfig(max_tokens=50, temperature=0.0)))
    final = chunks[-1]
    assert final.finish_reason == "error" and isinstance(final.error, SessionFatalError)
    assert session.explain_context().fatal
    with pytest.raises(SessionFatalError):
        session.ensure_prefix(session.prefix((("a", "abcdef"),)))
    session.close()
    assert ctx.closed


def test_reentry_from_the_stream_thread_is_refused() -> None:
    session, _ = fake_session()
    session.ensure_prefix(session.prefix((("a", "abcdef"),)))
    stream = session.decode(DecodeConfig(max_tokens=20))
    next(stream)
    with pytest.raises(SessionBusyError):
        session.prefill_suffix(session.suffix("x"))
    stream.close()
    session.prefill_suffix(session.suffix("x"))
