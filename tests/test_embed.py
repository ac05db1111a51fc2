"""Embeddings on the real default model."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest

import llamanode
from llamanode import ContextOverflowError, InvalidInputError, KVSession


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """embed(None, None, ...) uses Config(): all cores. On this shared 2-core machine llama.cpp's
    spinning barriers make 2 threads ~30x slower under load, so pin the core count to 1."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: 1)
        yield


@pytest.fixture(scope="module")
def vectors(one_thread: None, model_keeper: KVSession) -> dict[str, list[float]]:
    texts = ["def add(a, b): return a + b", "The weather is nice today."]
    return {text: llamanode.embed(None, None, text) for text in texts}


def test_embeddings_are_deterministic_normalised_and_fixed_size(vectors: dict[str, list[float]]) -> None:
    for text, vector in vectors.items():
        assert len(vector) == 576
        assert all(math.isfinite(v) for v in vector)
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
        assert llamanode.embed(None, None, text) == vector


def test_different_texts_embed_differently(vectors: dict[str, list[float]]) -> None:
    a, b = vectors.values()
    assert a != b
    assert math.fsum(x * y for x, y in zip(a, b, strict=True)) < 0.9999


def test_a_short_text_embeds_to_the_same_dimension(model_keeper: KVSession) -> None:
    assert len(llamanode.embed(None, None, "x")) == 576


@pytest.mark.parametrize("text", ["", "lone \ud800 surrogate"])
def test_invalid_text_is_refused(model_keeper: KVSession, text: str) -> None:
    with pytest.raises(InvalidInputError):
        llamanode.embed(None, None, text)


def test_too_long_a_text_overflows(model_keeper: KVSession) -> None:
    with pytest.raises(ContextOverflowError) as info:
        llamanode.embed(None, None, "word " * 3000)
    assert info.value.stage == "embed" and info.value.additional_tokens > info.value.num_ctx


def test_text_without_tokens_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="no tokens"):
        llamanode.embed(None, None, "\x1d")
