"""Experiment: a CacheBlend-like selection on llama.cpp, against `boundary` and `tail` at the same share.

CacheBlend recomputes the reused tokens whose KV deviates most from a fresh pass, judged at an early layer.
llama.cpp exposes no per-layer KV, but a context's eval callback (`cb_eval`) sees every graph node, and
returning False from it stops the graph. So a probe context on the same model runs a prefix only through
layer `--layer`, capturing that layer's keys before RoPE (the first node named `Kcur-<layer>`): about
(layer + 1) / n_layer of a prefill. Keys of the new prefix against the old one's, per kept token, are the
deviation; the top `--share` of the kept tokens are re-prefilled (one llama_decode per contiguous range:
llama.cpp decodes a sequence only at consecutive positions, so scattered tokens cost a batch each).

Per turn pair of a trace: quality against exact reuse (approx_quality.py) for each selection. Bench only:
it reaches into the session and the llama.cpp adapter.

    .venv/bin/python -m bench.deviation_probe --trace bench/out/trace.json --turns 6 --share 0.1 --layer 1
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import llamanode
from llamanode import ApproxReuse, Config, KVSession
from llamanode.backends.llamacpp.context import LlamaCppContext, _Batch, context_params
from llamanode.backends.llamacpp.native import lib
from llamanode.resident import chunk_sizes

from .approx_quality import ExactReference, measure
from .common import md_table
from .git_trace import load_trace


class KeyProbe:
    """A context on the session's model that runs prefixes through one layer and returns its pre-RoPE keys."""

    def __init__(self, session: KVSession, layer: int) -> None:
        L = lib()
        ctx = session._ctx
        assert isinstance(ctx, LlamaCppContext)
        model = ctx._model
        ggml = ctypes.CDLL(str(Path(L._lib._name).with_name("libggml-base.so")))
        ggml.ggml_get_name.restype, ggml.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        ggml.ggml_get_data.restype, ggml.ggml_get_data.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        self._ggml, self._target, self._rows = ggml, f"Kcur-{layer}".encode(), []  # type: list[Any]
        self._callback = L.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the probe
        params = context_params(session.config, model.rope(session.config))
        params.cb_eval, params.cb_eval_user_data = self._callback, None
        self._ctx = L.llama_init_from_model(model.handle, params)
        self._batch = _Batch(L.llama_n_batch(self._ctx))

    def _on_node(self, tensor: int, ask: bool, _: Any) -> bool:
        if self._ggml.ggml_get_name(tensor) != self._target or self._seen:
            return not ask  # not wanted; or computed: go on
        if ask:
            return True
        ne = (ctypes.c_int64 * 2).from_address(tensor + 16)  # struct ggml_tensor: type, buffer, ne[4]
        data = ctypes.cast(self._ggml.ggml_get_data(tensor), ctypes.POINTER(ctypes.c_float))
        self._rows.append(np.ctypeslib.as_array(data, (ne[1], ne[0])).copy())
        self._seen = True
        return False  # stop the graph: the layers after this one are not needed

    def keys(self, tokens: Sequence[int]) -> np.ndarray[Any, Any]:
        L = lib()
        L.llama_memory_clear(L.llama_get_memory(self._ctx), False)
        self._rows = []
        at = 0
        for size in chunk_sizes(len(tokens), self._batch.capacity):
            self._seen = False
            self._batch.fill(tokens[at : at + size], at)
            L.llama_decode(self._ctx, self._batch.batch)
            at += size
        return np.concatenate(self._rows)

    def close(self) -> None:
        self._batch.free()
        lib().llama_free(self._ctx)


def recompute(session: KVSession, tokens: Sequence[int], positions: Sequence[int]) -> None:
    """Re-prefill these resident positions through the adapter directly, in ranges of two tokens or more."""
    ctx = session._ctx
    chosen = [False] * len(tokens)
    for p in positions:
        chosen[p] = True
    for p in positions:  # a lone position takes a neighbour along: never a batch of one
        alone = not (p > 0 and chosen[p - 1]) and not (p + 1 < len(tokens) and chosen[p + 1])
        if alone:
            chosen[p + 1 if p + 1 < len(tokens) else p - 1] = True
    at = 0
    while at < len(tokens):
        if not chosen[at]:
            at += 1
            continue
        end = at
        while end < len(tokens) and chosen[end]:
            end += 1
        ctx.remove(at, end)
        for size in chunk_sizes(end - at, ctx._batch.capacity):
            ctx.prefill(tokens[at : at + size], at)
            at += size
    session._kv.r.logits_for = -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num-ctx", type=int, default=8192)
    args = parser.parse_args()
    trace = load_trace(args.trace)
    config = Config(num_ctx=args.num_ctx, num_threads=args.threads)
    model = str(llamanode.default_model_path())
    reference = ExactReference(model, config)
    rows = []
    for index in range(1, min(args.turns, len(trace.turns))):
        before, turn = trace.turns[index - 1], trace.turns[index]
        for selection in ("boundary", "tail", "deviation"):
            with llamanode.open_session(model, config) as s:
                s.ensure_prefix(s.prefix(before.segments))
                policy = ApproxReuse(selection="boundary", share=args.share if selection != "deviation" else 0.0)
                if selection == "tail":
                    policy = ApproxReuse(selection="tail", share=args.share)
                status = s.ensure_prefix(s.prefix(turn.segments), approximate=policy)
                approx = status.approximation
                if approx is None:  # the prefix did not change: nothing to select
                    continue
                picked = 0
                if selection == "deviation" and approx.spans:
                    probe = KeyProbe(s, args.layer)
                    old_keys = probe.keys(s.tokenize(before.prefix_text))
                    new_tokens = s.tokenize(turn.prefix_text)
                    new_keys = probe.keys(new_tokens)
                    probe.close()
                    kept = [
                        (p, p - span.shift) for span in approx.spans for p in range(span.token_start, span.token_end)
                    ]
                    dev = [float(np.linalg.norm(new_keys[p] - old_keys[o])) for p, o in kept]
                    budget = int(np.ceil(args.share * len(kept)))
                    chosen = [kept[i][0] for i in np.argsort(dev)[::-1][:budget]]
                    recompute(s, new_tokens, chosen)
                    picked = len(chosen)
                ref = reference.get(index, turn.segments, turn.suffix)
                quality = measure(s, turn.segments, turn.suffix, ref, True if selection == "deviation" else policy)
                recomputed = approx.recomputed_tokens + picked
                rows.append([index, selection, approx.reused_tokens, recomputed, quality.kl, quality.agree_forced,
                             quality.agree_free])  # fmt: skip
                print(rows[-1], file=sys.stderr, flush=True)
    reference.close()
    print(md_table(["turn", "selection", "kept", "recomputed", "KL", "agree (forced)", "agree (free)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
