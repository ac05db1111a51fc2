"""The decode loop: sample, stream UTF-8-safe text with stop strings held back, step the KV."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from .backends.base import Sampler
from .config import DecodeConfig
from .errors import ContextOverflowError, LlamaNodeError, SessionFatalError
from .resident import ResidentKV
from .session import DecodeReport, StreamChunk
from .textstream import TextAssembler

__all__ = ["decode_chunks"]


def decode_chunks(
    kv: ResidentKV, cfg: DecodeConfig, sampler: Sampler, num_ctx: int, check_usable: Callable[[], None]
) -> Iterator[StreamChunk]:
    """Chunks of generated text; the last one carries the finish reason, any error, and the report."""
    r = kv.r
    started = time.perf_counter()
    first_token_s = 0.0
    text = TextAssembler(cfg.stop)
    produced = 0
    held: list[int] = []  # ids whose bytes produced no text yet (half a character, a possible stop)
    reason = "max_tokens"
    matched: str | None = None
    error: LlamaNodeError | None = None
    try:
        check_usable()
        kv.refresh_logits()
        limit = cfg.max_tokens if cfg.max_tokens is not None else num_ctx
        while produced < limit:
            token = sampler.sample()
            if produced == 0:
                first_token_s = time.perf_counter() - started
            if kv.ctx.is_eog(token):
                reason = "eog"
                break
            produced += 1
            held.append(token)
            delta = text.feed(kv.ctx.token_bytes(token))
            if delta.text or delta.stopped:
                yield StreamChunk(delta.text, tuple(held))
                held.clear()
            if delta.stopped:
                reason, matched = "stop_string", delta.stop_string
                break
            if produced == limit:
                break
            if len(r.tokens) >= num_ctx:
                reason = "context_full"
                error = ContextOverflowError("decode", len(r.tokens), 1, num_ctx)
                break
            kv.step(token)
    except SessionFatalError as exc:
        reason, error = "error", exc
    tail = text.finish() if reason != "stop_string" else None
    elapsed = time.perf_counter() - started
    decode_s = max(elapsed - first_token_s, 1e-9)
    report = DecodeReport(produced, reason, first_token_s, elapsed, max(produced - 1, 0) / decode_s, matched)
    finish = "error" if error else ("length" if reason == "max_tokens" else "stop")
    yield StreamChunk(tail.text if tail else "", tuple(held), finish, error, report)
