"""Quality of approximate segment reuse against exact reuse on the same turn (bench only, never timed).

Per turn, an exact llamanode session gives the reference: the next-token distribution at every suffix
position and its 32 greedy tokens. The approximate session is measured on the same prefix and suffix:

- `kl`: mean KL(exact || approximate) of the next-token distribution over the suffix positions;
- `agree_forced`: both sessions are fed the suffix and the reference's 32 greedy tokens in one batch; the share
  of those 32 positions where their greedy choices (argmax) agree (teacher forcing: one early near-tie
  flip does not decide the other 31, and both sides use the same batched kernels);
- `agree_free`: how many leading tokens of the approximate session's own 32 greedy tokens equal the
  reference's, / 32 (the strict reading: a single near-tie flip ends it).

Reading every suffix position's logits needs the llama.cpp context itself: `all_logits` reaches into the
session (bench only) and leaves it as it found it (prefix resident, logits stale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import llamanode
from llamanode import ApproxReuse, DecodeConfig, KVSession
from llamanode.resident import chunk_sizes

__all__ = ["ExactReference", "Quality", "Reference", "all_logits", "measure"]

GENERATED = 32
FloatRows = np.ndarray[Any, np.dtype[np.float32]]


def all_logits(session: KVSession, tokens: Sequence[int]) -> FloatRows:
    """Log-probabilities after every token, decoded after the resident prefix; the session keeps its prefix."""
    from llamanode.backends.llamacpp.context import LlamaCppContext
    from llamanode.backends.llamacpp.native import lib

    ctx = session._ctx
    assert isinstance(ctx, LlamaCppContext), "quality needs the llama.cpp backend"
    L = lib()
    start = len(session.resident_tokens())
    rows: list[FloatRows] = []
    batch = ctx._batch
    at = 0
    for size in chunk_sizes(len(tokens), batch.capacity):  # never a batch of one
        chunk = tokens[at : at + size]
        batch.fill(chunk, start + at)
        at += size
        batch._out[: len(chunk)] = 1
        if L.llama_decode(ctx._ctx, batch.batch) != 0:
            raise RuntimeError("llama_decode failed while reading suffix logits")
        for i in range(len(chunk)):
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx._ctx, i), (ctx._n_vocab,))
            rows.append(_log_softmax(logits.astype(np.float32)))
    ctx.trim(start)
    session._kv.r.logits_for = -1  # the context's logits are not the prefix's any more
    return np.stack(rows)


def _log_softmax(x: FloatRows) -> FloatRows:
    shifted = x - x.max()
    result: FloatRows = shifted - np.log(np.exp(shifted).sum())
    return result


@dataclass(frozen=True)
class Reference:
    suffix: tuple[int, ...]  # suffix token ids
    generated: tuple[int, ...]  # the exact session's greedy tokens
    logprobs: FloatRows  # after each suffix token and each generated token but the last


@dataclass(frozen=True)
class Quality:
    kl: float
    agree_forced: float
    agree_free: float
    suffix_tokens: int

    def as_dict(self) -> dict[str, float]:
        return {"kl": self.kl, "agree_forced": self.agree_forced, "agree_free": self.agree_free}


class ExactReference:
    """An exact llamanode session replaying the same turns; one reference per turn, shared by strategies."""

    def __init__(self, model_path: str, config: llamanode.Config) -> None:
        self._session = llamanode.open_session(model_path, config)
        self._cache: tuple[int, Reference] | None = None

    def close(self) -> None:
        self._session.close()

    def get(self, index: int, segments: tuple[tuple[str, str], ...], suffix: str) -> Reference:
        if self._cache is None or self._cache[0] != index:
            self._cache = (index, self._compute(segments, suffix))
        return self._cache[1]

    def _compute(self, segments: tuple[tuple[str, str], ...], suffix: str) -> Reference:
        s = self._session
        prefix = s.prefix(segments)
        s.ensure_prefix(prefix, approximate=False)
        s.prefill_suffix(s.suffix(suffix))
        generated = tuple(t for c in s.decode(DecodeConfig(max_tokens=GENERATED)) for t in c.token_ids)
        s.ensure_prefix(prefix, approximate=False)
        ids = tuple(s._ctx.tokenize(suffix, False))  # as prefill_suffix tokenizes it
        return Reference(ids, generated, all_logits(s, [*ids, *generated[:-1]]))


def measure(
    session: KVSession, segments: tuple[tuple[str, str], ...], suffix: str, ref: Reference, policy: ApproxReuse | bool
) -> Quality:
    """The session (its prefix made with policy) against the reference, on the same turn."""
    prefix = session.prefix(segments)
    session.ensure_prefix(prefix, approximate=policy)  # the byte-hash path: the approximate prefix stays
    mine = all_logits(session, [*ref.suffix, *ref.generated[:-1]])
    n_suffix = len(ref.suffix)
    exact = ref.logprobs
    kl = float((np.exp(exact[:n_suffix]) * (exact[:n_suffix] - mine[:n_suffix])).sum(axis=1).mean())
    at = slice(n_suffix - 1, n_suffix - 1 + len(ref.generated))
    forced = float(np.mean(mine[at].argmax(axis=1) == exact[at].argmax(axis=1))) if ref.generated else 1.0
    session.prefill_suffix(session.suffix(suffix))
    own = [t for c in session.decode(DecodeConfig(max_tokens=GENERATED)) for t in c.token_ids]
    same = next((i for i, (a, b) in enumerate(zip(own, ref.generated, strict=False)) if a != b), None)
    leading = min(len(own), len(ref.generated)) if same is None else same
    return Quality(kl, forced, leading / GENERATED, n_suffix)
