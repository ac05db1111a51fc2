"""The native boundary. An adapter implements Backend (one loaded model: its facts, contexts, tokenizer,
grammar check, embeddings, KV padding) and KVContext (one sequence of KV cells); the core wraps contexts
in KVSession. Only adapters implement these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import Config, DecodeConfig
from ..rope import UNSCALED, RopeScaling

__all__ = ["Backend", "BackendIdentity", "KVContext", "ModelInfo", "Sampler"]


@dataclass(frozen=True)
class BackendIdentity:
    """What a context is: the model, its tokenizer, the build, and the KV-shaping config."""

    model_path: str
    model_digest: str  # sha256 of the weights file
    tokenizer_digest: str  # sha256 over every token piece and the special-token policy
    build_id: str  # native library version + digest of its binary
    runtime_digest: str  # build_id + KV-shaping config
    template_digest: str  # prompt format + template text
    add_bos: bool  # effective BOS policy (vocabulary default, unless disabled)
    chat_template: str | None  # the GGUF's own Jinja template
    n_ctx: int  # effective context size (llama.cpp pads it)
    description: str
    rope: RopeScaling = UNSCALED  # how positions beyond the trained window are served


class Sampler(Protocol):
    def sample(self) -> int:
        """Pick the next token from the context's current last logits (and accept it)."""
        ...

    def close(self) -> None:
        """Free the sampler; may be called more than once."""
        ...


class KVContext(Protocol):
    """One sequence of KV cells. Positions are contiguous from 0; the core owns the token list."""

    identity: BackendIdentity

    def tokenize(self, text: str, add_bos: bool) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def trim(self, keep: int) -> None:
        """Remove every cell at position >= keep."""
        ...

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        """Decode tokens as one batch at positions start..; logits live for the last one.

        Every position before start holds a cell and start.. start+len(tokens) hold none. Cells after
        the batch may exist (segment reuse fills gaps): attention is causal, so the batch never sees them.
        """
        ...

    def arm_interrupts(self, armed: bool) -> None:
        """Arm (or disarm) interrupt() for the prefills that follow; disarming clears an interrupt not yet
        taken. Only a prewarm's background chunks are armed: unarmed prefills pay nothing for it.

        Armed, a prefill of at most n_ubatch tokens either completes or raises PrefillInterruptedError with
        the context exactly as before it (no logits live)."""
        ...

    def interrupt(self) -> None:
        """From any thread: while armed, the prefill in flight (or the next one, if none is) raises
        PrefillInterruptedError soon (within one graph node on llama.cpp). The interrupt stays pending until
        a prefill takes it or the context is disarmed. Unarmed, it does nothing."""
        ...

    def remove(self, start: int, end: int) -> None:
        """Remove the cells at positions start <= p < end; the others keep their positions."""
        ...

    def shift(self, start: int, end: int, delta: int) -> None:
        """Move the cells at positions start <= p < end by delta (their keys re-rotated to the new positions).

        The target positions hold no other cells. The move may take effect at the next prefill, so one
        must follow before state_bytes(); until then state_bytes() refuses.
        """
        ...

    def shift_unsupported(self) -> str | None:
        """Why remove/shift/gap prefill cannot work on this context, or None when they can."""
        ...

    def step(self, token: int, position: int) -> None:
        """Decode one generated token (a batch of one)."""
        ...

    def new_sampler(self, config: DecodeConfig) -> Sampler: ...

    def state_bytes(self) -> bytes:
        """The sequence's KV cells as bytes (for snapshots and forks)."""
        ...

    def load_state(self, data: bytes) -> None:
        """Replace the sequence's cells with a state from state_bytes()."""
        ...

    def kv_bytes(self) -> int:
        """Bytes of KV memory this context holds."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, as plain values (the server's /v1/models, chat template and BOS/EOS rules)."""

    path: str
    digest: str  # sha256 of the weights file
    description: str
    chat_template: str | None  # the GGUF's own Jinja template
    bos_token: str  # the BOS token's text ("" if the vocabulary has none)
    eos_token: str
    add_bos: bool  # the vocabulary's own BOS policy (Config.disable_bos may turn it off)
    add_eos: bool
    n_ctx_train: int
    kv_bytes_per_token: Mapping[str, float]  # by kv_cache_type: KV bytes one resident token costs


class Backend(Protocol):
    """One handle to a loaded model: the only way the core reaches a model. close() drops the handle;
    contexts opened from it stay valid until they are closed themselves."""

    info: ModelInfo

    def identity(self, config: Config) -> BackendIdentity:
        """What a context opened with config is (n_ctx already padded), without opening one."""
        ...

    def padded_ctx(self, num_ctx: int) -> int:
        """The n_ctx a context asked for num_ctx really gets (llama.cpp pads it)."""
        ...

    def open_context(self, config: Config) -> KVContext: ...

    def tokenize(self, text: str, add_bos: bool) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token (special tokens as their text); InvalidInputError outside the vocabulary."""
        ...

    def check_grammar(self, config: DecodeConfig) -> None:
        """Compile config's grammar or JSON schema against the vocabulary; GrammarError if it fails."""
        ...

    def embed(self, config: Config, text: str) -> list[float]:
        """A mean-pooled, L2-normalised embedding of text."""
        ...

    def close(self) -> None: ...
