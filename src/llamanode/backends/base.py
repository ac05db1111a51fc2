"""The native boundary: small, explicit KV-context operations. Only adapters implement it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import DecodeConfig
from ..rope import UNSCALED, RopeScaling

__all__ = ["BackendIdentity", "KVContext", "Sampler"]


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
        """Decode tokens as one batch at positions start..; logits live for the last one."""
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
