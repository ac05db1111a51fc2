"""The raw floor: the plainest llama_decode loop on llama-cpp-python's low-level ctypes API.

No llamanode code runs here: one model, one context per setting, one reusable batch filled
through numpy views, greedy sampling by argmax over the live logits. Only llamanode's pure
weight-repack decision is reused, so the floor loads its weights exactly as llamanode does. Whatever llamanode adds
on top of this is overhead; the fastest setting of this loop is the floor it is held to.

Run alone for a quick look: `.venv/bin/python -m bench.raw_loop [--prefix 4096 --suffix 92]`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamanode.backends.llamacpp.cpu import RepackDecision, decide_weight_repack

from .common import now
from .prompts import chatml_prefix, chatml_suffix

__all__ = ["RawContext", "RawModel", "RawSetting"]

_LOG_CALLBACK: Any = None


def _lib() -> Any:
    """llama_cpp's ctypes module with logging silenced and the backend initialised (once)."""
    global _LOG_CALLBACK
    from llama_cpp import llama_cpp as L

    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(_LOG_CALLBACK, None)
        L.llama_backend_init()
    return L


@dataclass(frozen=True)
class RawSetting:
    """The knobs that change speed: logical and physical batch, flash attention (threads are per call)."""

    n_batch: int
    n_ubatch: int
    flash_attn: bool

    @property
    def label(self) -> str:
        return f"{self.n_batch}/{self.n_ubatch} fa={'on' if self.flash_attn else 'off'}"


def repack_decision(setting: str = "auto") -> RepackDecision:
    """llamanode's weight-repack choice for this CPU (off where llama.cpp's AMX kernel crashes)."""
    return decide_weight_repack(_lib().llama_print_system_info().decode("utf-8", "replace"), setting)


class RawModel:
    """A loaded GGUF (CPU only) and its vocabulary."""

    def __init__(self, path: str, weight_repack: str = "auto") -> None:
        L = _lib()
        self.repack = repack_decision(weight_repack)
        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = self.repack.enabled
        self.handle = L.llama_model_load_from_file(os.fsencode(path), params)
        if not self.handle:
            raise RuntimeError(f"could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.handle)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))

    def tokenize(self, text: str) -> list[int]:
        """Special tokens parsed, no BOS (the default model adds none): what llamanode does."""
        L = _lib()
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        arr = (ctypes.c_int32 * cap)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), arr, cap, False, True)
        if n < 0:
            cap = -n
            arr = (ctypes.c_int32 * cap)()
            n = L.llama_tokenize(self.vocab, raw, len(raw), arr, cap, False, True)
        return list(arr[:n])

    def is_eog(self, token: int) -> bool:
        return bool(_lib().llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.handle:
            _lib().llama_model_free(self.handle)
            self.handle = None


class RawContext:
    """One llama_context, sequence 0, f16 KV: prefill, trim, argmax, step. Nothing else."""

    def __init__(self, model: RawModel, setting: RawSetting, n_ctx: int, threads: int) -> None:
        L = _lib()
        self.model = model
        self.setting = setting
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = setting.n_batch
        cp.n_ubatch = setting.n_ubatch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if setting.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(model.handle, cp)
        if not self.ctx:
            raise RuntimeError(f"could not create a context for {setting.label}")
        self.threads = threads
        self.mem = L.llama_get_memory(self.ctx)
        self.n_batch = int(L.llama_n_batch(self.ctx))
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        b = self.batch
        self._tok = np.ctypeslib.as_array(b.token, (self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, (self.n_batch,))
        self._nsq = np.ctypeslib.as_array(b.n_seq_id, (self.n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, (self.n_batch,))
        for i in range(self.n_batch):
            b.seq_id[i][0] = 0
        self._nsq[:] = 1

    def set_threads(self, threads: int) -> None:
        _lib().llama_set_n_threads(self.ctx, threads, threads)
        self.threads = threads

    def clear(self) -> None:
        _lib().llama_memory_seq_rm(self.mem, 0, -1, -1)

    def trim(self, keep: int) -> None:
        if not _lib().llama_memory_seq_rm(self.mem, 0, keep, -1):
            raise RuntimeError("seq_rm refused")

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        n = len(tokens)
        self._tok[:n] = tokens
        self._pos[:n] = np.arange(start, start + n)
        self._out[:n] = 0
        self._out[n - 1] = 1
        self.batch.n_tokens = n
        rc = _lib().llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} at {start} ({n} tokens)")

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        """Decode tokens at positions start.. in chunks of n_batch; logits live for the last one."""
        for at in range(0, len(tokens), self.n_batch):
            self._decode(tokens[at : at + self.n_batch], start + at)

    def argmax(self) -> int:
        logits = _lib().llama_get_logits_ith(self.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, (self.model.n_vocab,))))

    def step(self, token: int, position: int) -> None:
        self._decode((token,), position)

    # -- the measurements ---------------------------------------------------------------------
    def cold_prefill(self, tokens: Sequence[int]) -> float:
        """Seconds to prefill tokens into an empty sequence."""
        self.clear()
        t0 = now()
        self.prefill(tokens, 0)
        _lib().llama_synchronize(self.ctx)
        return now() - t0

    def warm_turn(self, suffix: Sequence[int], at: int) -> tuple[float, float, int]:
        """(time to first token, time to decode that token, the token) for suffix prefilled at position at.

        The first figure is the floor for a warm turn: drop the old turn, prefill the new
        suffix, pick the first token. The token is then decoded, as a real turn would.
        """
        t0 = now()
        self.trim(at)
        self.prefill(suffix, at)
        token = self.argmax()
        t1 = now()
        self.step(token, at + len(suffix))
        _lib().llama_synchronize(self.ctx)
        return t1 - t0, now() - t1, token

    def decode(self, n_tokens: int, at: int) -> tuple[float, list[int]]:
        """Greedy-decode n_tokens from live logits at position at (EOG ignored).

        Returns tokens/s counted like llamanode's DecodeReport: (n - 1) tokens over the time
        after the first one was picked, with the last token picked but not decoded.
        """
        t0 = now()
        token = self.argmax()
        t_first = now()
        out = [token]
        position = at
        for _ in range(n_tokens - 1):
            self.step(token, position)
            position += 1
            token = self.argmax()
            out.append(token)
        elapsed = now() - t_first
        del t0
        return (n_tokens - 1) / elapsed if elapsed > 0 else float("nan"), out

    def close(self) -> None:
        if self.ctx:
            L = _lib()
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="GGUF path (default: llamanode's default model)")
    parser.add_argument("--prefix", type=int, default=4096)
    parser.add_argument("--suffix", type=int, default=92)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--flash-attn", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--decode", type=int, default=0, help="also greedy-decode this many tokens (tok/s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--weight-repack", default="auto", choices=["auto", "on", "off"], help="as Config.weight_repack"
    )
    args = parser.parse_args(argv)
    if args.model is None:
        from llamanode import default_model_path

        args.model = str(default_model_path())
    model = RawModel(args.model, args.weight_repack)
    setting = RawSetting(args.batch, args.ubatch, args.flash_attn)
    ctx = RawContext(model, setting, args.prefix + max(args.suffix, args.decode, 128) + 256, args.threads)
    prefix = model.tokenize(chatml_prefix(model.tokenize, args.prefix))
    suffixes = [model.tokenize(chatml_suffix(model.tokenize, args.suffix, rep)) for rep in range(args.reps)]
    cold = ctx.cold_prefill(prefix)
    warm: list[float] = []
    for suffix in suffixes:
        warm.append(ctx.warm_turn(suffix, len(prefix))[0])
    tps = ctx.decode(args.decode, len(prefix) + len(suffixes[-1]) + 1)[0] if args.decode > 1 and suffixes else None
    ctx.close()
    model.close()
    result = {
        "setting": setting.label,
        "threads": args.threads,
        "weight_repack": model.repack.label,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "prefix_tokens": len(prefix),
        "cold_prefill_tok_s": len(prefix) / cold,
        "warm_ttft_ms": [x * 1e3 for x in warm],
        "decode_tok_s": tps,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"weight repack {model.repack.label}: {model.repack.reason}")
    print(f"{setting.label} t{args.threads}: cold prefill {len(prefix)} tokens {len(prefix) / cold:.0f} tok/s")
    for ms in result["warm_ttft_ms"]:
        print(f"  warm {args.suffix} tokens at {len(prefix)}: first token {ms:.1f} ms")
    if tps is not None:
        print(f"  decode {args.decode} tokens: {tps:.1f} tok/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
