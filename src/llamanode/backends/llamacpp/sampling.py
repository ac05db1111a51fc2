"""Sampler chains from DecodeConfig: grammar first, then penalties, then greedy or top-k/p/min-p."""

from __future__ import annotations

import secrets
from typing import Any

from ...config import DecodeConfig
from ...errors import GrammarError
from ...grammar import json_schema_gbnf
from .lazy import TriggerGuard, lazy_grammar_sampler
from .native import lib

__all__ = ["LlamaCppSampler", "grammar_text"]


def grammar_text(config: DecodeConfig) -> str | None:
    """The GBNF to enforce: the caller's grammar, or one compiled from the JSON schema."""
    if config.grammar:
        return config.grammar
    if config.json_schema is None:
        return None
    return json_schema_gbnf(config.json_schema)  # llamanode's own converter (see grammar.py for why)


class LlamaCppSampler:
    """A llama_sampler chain bound to one context; sample() also accepts the token."""

    def __init__(self, ctx: int, vocab: int, n_vocab: int, config: DecodeConfig) -> None:
        L = lib()
        self._ctx = ctx
        self._chain: Any = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        self._guard = TriggerGuard(config.grammar_triggers, vocab, n_vocab) if config.grammar_triggers else None
        try:
            self._build(vocab, n_vocab, config)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        lib().llama_sampler_chain_add(self._chain, sampler)

    def _build(self, vocab: int, n_vocab: int, config: DecodeConfig) -> None:
        L = lib()
        gbnf = grammar_text(config)
        if gbnf is not None:
            if config.grammar_triggers:
                grammar = lazy_grammar_sampler(vocab, gbnf.encode("utf-8"), config.grammar_triggers)
            else:
                grammar = L.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
            if not grammar:
                raise GrammarError("grammar failed to parse (GBNF syntax error or no 'root' rule)")
            self._add(grammar)
        if config.repeat_penalty != 1.0:
            self._add(L.llama_sampler_init_penalties(n_vocab, 64, config.repeat_penalty, 0.0, 0.0))
        if config.greedy:
            self._add(L.llama_sampler_init_greedy())
            return
        seed = config.seed if config.seed is not None else secrets.randbits(32) % (2**32 - 1)
        self._add(L.llama_sampler_init_top_k(config.top_k))
        self._add(L.llama_sampler_init_top_p(config.top_p, 1))
        self._add(L.llama_sampler_init_min_p(config.min_p, 1))
        self._add(L.llama_sampler_init_temp(config.temperature))
        self._add(L.llama_sampler_init_dist(seed))

    def sample(self) -> int:
        if self._guard is not None and self._guard.waiting:
            return self._guard.sample(self._chain, self._ctx)
        return int(lib().llama_sampler_sample(self._chain, self._ctx, -1))

    def close(self) -> None:
        if self._chain:
            lib().llama_sampler_free(self._chain)
            self._chain = None
