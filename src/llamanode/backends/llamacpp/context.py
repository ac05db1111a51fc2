"""LlamaCppContext: one llama_context holding one sequence (seq 0; seq 1 only parks cells while a gap is filled),
implementing KVContext."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...buffers import fresh_bytes
from ...config import Config, DecodeConfig
from ...errors import PrefillInterruptedError, SessionFatalError, SessionUnavailableError, SnapshotError
from ...rope import RopeScaling
from ..base import BackendIdentity
from .model import LoadedModel, kv_bytes_per_token, release_model
from .native import lib
from .sampling import LlamaCppSampler

__all__ = ["LlamaCppContext", "context_params", "tokenize"]

_SEQ, _PARKED = 0, 1  # the session's sequence, and where cells after a gap wait while it is filled
_ABORTED = 2  # llama_decode: the abort callback stopped the graph (the ubatch's cells were removed)
_GGML_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}


_ROPE_TYPES = {"none": "UNSPECIFIED", "yarn": "YARN", "linear": "LINEAR"}  # unspecified: the GGUF's own


def context_params(config: Config, rope: RopeScaling) -> Any:
    """llama_context_params with every setting explicit (no AUTO left for llama.cpp to pick)."""
    L = lib()
    cp = L.llama_context_default_params()
    # unscaled: the GGUF's own RoPE (llama.cpp's defaults); scaled: like llama-server's
    # --rope-scaling K --rope-scale F --yarn-orig-ctx n_ctx_train
    cp.rope_scaling_type = getattr(L, f"LLAMA_ROPE_SCALING_TYPE_{_ROPE_TYPES[rope.kind]}")
    if rope.scaled:
        cp.rope_freq_scale = 1.0 / rope.factor
        cp.yarn_orig_ctx = rope.n_ctx_train
    cp.n_ctx = config.num_ctx
    cp.n_batch = config.num_batch
    cp.n_ubatch = config.num_ubatch
    # sequence 1 parks the cells after a gap while segment reuse prefills into it (llama.cpp decodes a
    # sequence only at pos_max + 1); unified, parking is bookkeeping only. Same KV, state and logits as one sequence.
    cp.n_seq_max = 2
    cp.kv_unified = True
    cp.n_threads = cp.n_threads_batch = config.threads
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.type_k = cp.type_v = _GGML_TYPES[config.kv_type]
    cp.swa_full = True  # truncation anywhere stays valid on sliding-window models
    cp.no_perf = True
    return cp


def tokenize(model: LoadedModel, text: str, add_bos: bool) -> list[int]:
    """Token ids of text (special tokens parsed), with BOS first when add_bos and the vocabulary has one."""
    L = lib()
    raw = text.encode("utf-8")
    cap = len(raw) + 8
    arr = (ctypes.c_int32 * cap)()
    n = L.llama_tokenize(model.vocab, raw, len(raw), arr, cap, False, True)
    if n < 0:
        cap = -n
        arr = (ctypes.c_int32 * cap)()
        n = L.llama_tokenize(model.vocab, raw, len(raw), arr, cap, False, True)
    tokens = list(arr[:n])
    bos = L.llama_vocab_bos(model.vocab)
    return [bos, *tokens] if add_bos and bos >= 0 else tokens


class _Batch:
    """A reusable llama_batch of fixed capacity for sequence 0, filled through numpy views."""

    def __init__(self, capacity: int) -> None:
        L = lib()
        self.capacity = capacity
        self.batch = L.llama_batch_init(capacity, 0, 1)
        b = self.batch
        self._tok = np.ctypeslib.as_array(b.token, (capacity,))
        self._pos = np.ctypeslib.as_array(b.pos, (capacity,))
        self._nsq = np.ctypeslib.as_array(b.n_seq_id, (capacity,))
        self._out = np.ctypeslib.as_array(b.logits, (capacity,))
        for i in range(capacity):
            b.seq_id[i][0] = 0
        self._nsq[:] = 1

    def fill(self, tokens: Sequence[int], start: int) -> None:
        n = len(tokens)
        self._tok[:n] = tokens
        self._pos[:n] = np.arange(start, start + n)
        self._out[:n] = 0
        self._out[n - 1] = 1
        self.batch.n_tokens = n

    def free(self) -> None:
        lib().llama_batch_free(self.batch)


class LlamaCppContext:
    """KV operations on one llama_context. Every native failure raises SessionFatalError."""

    def __init__(self, model: LoadedModel, config: Config) -> None:
        L = lib()
        self._model = model
        self._config = config
        self._ctx = L.llama_init_from_model(model.handle, context_params(config, model.rope(config)))
        if not self._ctx:
            raise SessionUnavailableError(f"llama.cpp could not create a context (num_ctx={config.num_ctx})")
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = _Batch(L.llama_n_batch(self._ctx))
        self._n_vocab = L.llama_vocab_n_tokens(model.vocab)
        self.identity: BackendIdentity = model.identity(config, int(L.llama_n_ctx(self._ctx)))
        # computed now: after close() the model may be freed, and kv_bytes() must not touch it
        self._kv_bytes = int(kv_bytes_per_token(model, config.kv_type) * self.identity.n_ctx)
        self._shift_pending = False
        # interrupts (arm_interrupts / interrupt): llama.cpp's graph thread 0 calls the abort callback after
        # every graph node (605 per chunk on the default model, whatever the chunk size), taking the GIL each
        # time; so it is set only while armed (a prewarm's chunks). Measured on 2 cores (bench/prewarm_abort.py,
        # one chunk at position 0, armed/unarmed alternated, two runs): 64 tokens 0.988x / 1.005x, 512 tokens
        # 1.003x / 1.009x, i.e. within 1 %; a stop then takes 0.4-7 ms instead of up to a whole chunk (~140 ms
        # at 64, ~1.1 s at 512).
        # A Python thread hogging the GIL would stall the graph at each node: the callback is cheap only
        # because the prewarm's callers are idle while it runs.
        self._interrupt_lock = threading.Lock()
        self._armed = False
        self._interrupted = False  # read by the callback without the lock: a bool, written under the GIL
        self._abort_fn = L.ggml_abort_callback(self._should_abort)  # kept alive: llama.cpp holds a pointer

    def _should_abort(self, _data: object) -> bool:
        return self._interrupted

    # tokens
    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return tokenize(self._model, text, add_bos)

    def token_bytes(self, token: int) -> bytes:
        return self._model.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return bool(lib().llama_vocab_is_eog(self._model.vocab, token))

    # KV
    def trim(self, keep: int) -> None:
        if not lib().llama_memory_seq_rm(self._mem, _SEQ, keep, -1):
            raise SessionFatalError(f"llama_memory_seq_rm refused to drop positions >= {keep}")

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        if len(tokens) > self._batch.capacity:
            raise SessionFatalError(f"batch of {len(tokens)} exceeds n_batch {self._batch.capacity}")
        self._take_interrupt(start, before=True)
        self._batch.fill(tokens, start)
        parked = self._park_after(start + len(tokens))
        try:
            rc = lib().llama_decode(self._ctx, self._batch.batch)
            aborted = rc == _ABORTED and self._armed
            if aborted:
                # llama.cpp removed the aborted ubatch's cells; earlier ubatches of a batch longer than
                # n_ubatch would stay, so drop the whole batch's positions (the cells after it are parked)
                lib().llama_memory_seq_rm(self._mem, _SEQ, start, start + len(tokens))
        finally:
            if parked:
                self._unpark()
        if aborted:
            self._take_interrupt(start, before=False)
        if rc != 0:
            raise SessionFatalError(f"llama_decode returned {rc} at position {start} ({len(tokens)} tokens)")
        self._shift_pending = False  # llama.cpp applies pending shifts before a decode

    def arm_interrupts(self, armed: bool) -> None:
        with self._interrupt_lock:
            self._interrupted = False
            if armed != self._armed:
                callback = self._abort_fn if armed else lib().ggml_abort_callback()  # no argument: NULL
                lib().llama_set_abort_callback(self._ctx, callback, None)
                self._armed = armed

    def interrupt(self) -> None:
        with self._interrupt_lock:
            if self._armed:
                self._interrupted = True

    def _take_interrupt(self, start: int, before: bool) -> None:
        """Raise PrefillInterruptedError if an interrupt is pending (it is taken: the next prefill runs)."""
        with self._interrupt_lock:
            if not (self._armed and self._interrupted):
                return
            self._interrupted = False
        where = "before" if before else "during"
        raise PrefillInterruptedError(f"prefill at position {start} interrupted {where} its decode")

    def remove(self, start: int, end: int) -> None:
        if not lib().llama_memory_seq_rm(self._mem, _SEQ, start, end):
            raise SessionFatalError(f"llama_memory_seq_rm refused to drop positions {start}..{end}")

    def shift(self, start: int, end: int, delta: int) -> None:
        why = self.shift_unsupported()
        if why is not None:  # llama.cpp would abort the process, not fail
            raise SessionFatalError(f"cannot shift KV positions: {why}")
        lib().llama_memory_seq_add(self._mem, _SEQ, start, end, delta)
        self._shift_pending = self._shift_pending or delta != 0

    def shift_unsupported(self) -> str | None:
        L = lib()
        if not self._mem:
            return "the model has no KV memory"
        if L.llama_model_is_recurrent(self._model.handle) or L.llama_model_is_hybrid(self._model.handle):
            return "a recurrent or hybrid model's state cannot drop a middle range of positions"
        if not L.llama_memory_can_shift(self._mem):
            return "llama.cpp cannot shift this model's KV positions (multi-dimensional or per-layer RoPE)"
        return None

    def _park_after(self, end: int) -> bool:
        """Move cells at positions >= end to the parking sequence, so a batch can fill the gap before them."""
        L = lib()
        if L.llama_memory_seq_pos_max(self._mem, _SEQ) < end:
            return False
        L.llama_memory_seq_cp(self._mem, _SEQ, _PARKED, end, -1)
        L.llama_memory_seq_rm(self._mem, _SEQ, end, -1)
        return True

    def _unpark(self) -> None:
        L = lib()
        L.llama_memory_seq_cp(self._mem, _PARKED, _SEQ, -1, -1)
        L.llama_memory_seq_rm(self._mem, _PARKED, -1, -1)

    def step(self, token: int, position: int) -> None:
        self.prefill((token,), position)

    def last_logits(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A copy of the logits of the last decoded output (for exactness checks and benchmarks)."""
        ptr = lib().llama_get_logits_ith(self._ctx, -1)
        if not ptr:
            raise SessionFatalError("no logits are live in this context")
        return np.ctypeslib.as_array(ptr, (self._n_vocab,)).copy()

    def new_sampler(self, config: DecodeConfig) -> LlamaCppSampler:
        return LlamaCppSampler(self._ctx, self._model.vocab, self._n_vocab, config)

    # state
    def state_bytes(self) -> bytes:
        L = lib()
        if self._shift_pending:  # the cells' positions moved but their keys are rotated only at the next decode
            raise SnapshotError("a KV shift is pending until the next prefill; nothing exported")
        size = L.llama_state_seq_get_size(self._ctx, 0)
        data, view = fresh_bytes(size)  # llama.cpp writes straight into the bytes object: no zero-fill, no copy
        written = L.llama_state_seq_get_data(self._ctx, ctypes.cast(view, ctypes.POINTER(ctypes.c_uint8)), size, 0)
        if written == 0:
            raise SnapshotError("llama_state_seq_get_data wrote nothing")
        return data if written == size else data[:written]

    def load_state(self, data: bytes) -> None:
        L = lib()
        # A pointer into the bytes object itself: llama.cpp only reads it, so no copy is needed.
        buf = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
        self._shift_pending = False  # the sequence is replaced whole
        if L.llama_state_seq_set_data(self._ctx, buf, len(data), 0) != len(data):
            L.llama_memory_seq_rm(self._mem, 0, -1, -1)  # never leave a half-restored sequence
            raise SnapshotError("llama.cpp refused the state (layout, type or size differs)")

    def kv_bytes(self) -> int:
        return self._kv_bytes

    def close(self) -> None:
        if self._ctx:
            self._batch.free()
            lib().llama_free(self._ctx)
            self._ctx = None
            release_model(self._model)
