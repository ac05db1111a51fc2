"""Embeddings: a mean-pooled, L2-normalised vector from a dedicated embedding context."""

from __future__ import annotations

import ctypes
import math
import threading

from ...config import Config
from ...errors import ContextOverflowError, InvalidInputError, SessionFatalError
from .model import acquire_model
from .native import lib

__all__ = ["embed_text"]

_contexts: dict[tuple[str, bool, int], tuple[int, object]] = {}
_lock = threading.Lock()
_MAX_TOKENS = 2048


def _embedding_context(model_path: str, config: Config) -> tuple[int, int, int]:
    """(ctx, vocab, n_embd) for a model; created once per process and model."""
    L = lib()
    model = acquire_model(model_path, config.weight_repack)
    key = (str(model.path), model.repack.enabled, config.threads)
    if key not in _contexts:
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = _MAX_TOKENS
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = config.threads
        cp.embeddings = True
        cp.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = L.llama_init_from_model(model.handle, cp)
        if not ctx:
            raise SessionFatalError("llama.cpp could not create an embedding context")
        _contexts[key] = (ctx, model)
    else:
        from .model import release_model

        release_model(model)  # the cached context already holds a reference
    ctx, held = _contexts[key]
    return ctx, held.vocab, lib().llama_model_n_embd(held.handle)  # type: ignore[attr-defined]


def embed_text(model_path: str, config: Config, text: str) -> list[float]:
    L = lib()
    if not text:
        raise InvalidInputError("cannot embed empty text")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError("text is not valid UTF-8") from exc
    with _lock:
        ctx, vocab, n_embd = _embedding_context(model_path, config)
        arr = (ctypes.c_int32 * (len(raw) + 8))()
        n = L.llama_tokenize(vocab, raw, len(raw), arr, len(arr), False, False)
        if n > _MAX_TOKENS or n < 0:
            raise ContextOverflowError("embed", 0, abs(n), _MAX_TOKENS)
        if n == 0:
            raise InvalidInputError("text has no tokens to embed (only control characters?)")
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        batch = L.llama_batch_get_one(arr, n)
        if L.llama_decode(ctx, batch) != 0:
            raise SessionFatalError("llama_decode failed while embedding")
        vec = L.llama_get_embeddings_seq(ctx, 0)
        values = [float(vec[i]) for i in range(n_embd)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
