"""The Backend protocol: the real llama.cpp backend and the toy one keep the same contract."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import llamanode
from fakes import FakeBackend
from llamanode import Backend, Config, DecodeConfig, GrammarError, KVSession, SessionClosedError
from llamanode.errors import PrefillInterruptedError
from llamanode.identity import SnapshotIdentity

CONFIG = Config(num_ctx=300, num_threads=1)  # not a multiple of either backend's padding


@pytest.fixture(params=["fake", "llamacpp"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "llamacpp":
        request.getfixturevalue("model_keeper")  # keeps the model loaded across tests
        handle: Backend = llamanode.load_backend(None)
    else:
        handle = FakeBackend()
    yield handle
    handle.close()


def test_identity_and_padding_are_known_before_a_context_exists(backend: Backend) -> None:
    n_ctx = backend.padded_ctx(CONFIG.num_ctx)
    assert n_ctx >= CONFIG.num_ctx and n_ctx != CONFIG.num_ctx
    assert backend.padded_ctx(n_ctx) == n_ctx
    expected = backend.identity(CONFIG)
    assert expected.n_ctx == n_ctx
    context = backend.open_context(CONFIG)
    try:
        assert context.identity == expected
        per_token = backend.info.kv_bytes_per_token[CONFIG.kv_type]
        assert context.kv_bytes() == int(per_token * n_ctx)
        assert SnapshotIdentity.of(context.identity, CONFIG).kv_config["n_ctx"] == n_ctx
    finally:
        context.close()


def test_the_backend_tokenizes_like_its_contexts(backend: Backend) -> None:
    text = "<|im_start|>user\nHello, wörld<|im_end|>\n"
    context = backend.open_context(CONFIG)
    try:
        for add_bos in (False, True):
            assert backend.tokenize(text, add_bos) == context.tokenize(text, add_bos)
    finally:
        context.close()


def test_the_core_wraps_a_context_in_a_session(backend: Backend) -> None:
    with KVSession(backend.open_context(CONFIG), CONFIG) as session:
        status = session.ensure_prefix(session.prefix((("system", "You are terse. " * 4),)))
        assert status.prefilled_tokens == status.prefix_tokens > 0
        assert session.num_ctx == backend.padded_ctx(CONFIG.num_ctx)


def test_grammar_is_checked_without_a_context(backend: Backend) -> None:
    backend.check_grammar(DecodeConfig())
    backend.check_grammar(DecodeConfig(grammar='root ::= "yes" | "no"'))
    with pytest.raises(GrammarError):
        backend.check_grammar(DecodeConfig(grammar="not a grammar"))


def test_model_info_and_embeddings(backend: Backend) -> None:
    info = backend.info
    assert info.digest and info.description and info.n_ctx_train > 0
    assert set(info.kv_bytes_per_token) == {"f16", "q8_0", "q4_0"}
    vector = backend.embed(CONFIG, "def add(a, b): return a + b")
    assert len(vector) == len(backend.embed(CONFIG, "x")) > 0


def test_contexts_outlive_the_handle_that_opened_them(backend: Backend) -> None:
    context = backend.open_context(CONFIG)
    backend.close()
    try:
        context.prefill(context.tokenize("still usable", False), 0)
    finally:
        context.close()
    with pytest.raises(SessionClosedError):
        backend.tokenize("closed", False)


def test_an_interrupt_is_taken_only_while_armed_and_leaves_the_kv_as_before(backend: Backend) -> None:
    def logits_after(interrupts: bool) -> object:
        ctx = backend.open_context(CONFIG)
        tokens = ctx.tokenize("def add(a, b):\n    return a + b\n" * 4, False)[:24]
        if interrupts:
            ctx.interrupt()  # unarmed: nothing pending
        ctx.prefill(tokens[:8], 0)
        if interrupts:
            ctx.arm_interrupts(True)
            ctx.interrupt()  # pending until a prefill takes it
            with pytest.raises(PrefillInterruptedError):
                ctx.prefill(tokens[8:16], 8)
            ctx.prefill(tokens[8:16], 8)  # taken: this one runs
            ctx.interrupt()
            ctx.arm_interrupts(False)  # disarming drops it
        else:
            ctx.prefill(tokens[8:16], 8)
        ctx.prefill(tokens[16:24], 16)
        logits = ctx.last_logits()
        ctx.close()
        return logits

    assert np.array_equal(np.asarray(logits_after(True)), np.asarray(logits_after(False)))
