"""What the server needs to know about its model before any workspace exists.

Read from the pool's backend (the one handle through which everything reaches the model): the chat
template, BOS/EOS text and policy, and a grammar check against the vocabulary before a request
touches any workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backends.base import Backend
from ..config import Config, DecodeConfig
from ..rope import RopeScaling, plan_rope

__all__ = ["ModelInfo", "ModelProbe"]


@dataclass(frozen=True)
class ModelInfo:
    path: str
    model_id: str
    digest: str
    description: str
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    add_eos: bool


class ModelProbe:
    """The server's view of a backend it does not own (the pool closes it)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        m = backend.info
        self.info = ModelInfo(
            path=m.path,
            model_id=Path(m.path).name.removesuffix(".gguf"),
            digest=m.digest,
            description=m.description,
            chat_template=m.chat_template,
            bos_token=m.bos_token,
            eos_token=m.eos_token,
            add_bos=m.add_bos,
            add_eos=m.add_eos,
        )

    def check_grammar(self, config: DecodeConfig) -> None:
        """Compile the config's grammar (or JSON schema) against the vocabulary; GrammarError if it fails."""
        self._backend.check_grammar(config)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """llama-server's /tokenize: special tokens parsed; BOS first when add_special and the vocabulary adds it."""
        return self._backend.tokenize(text, add_special and self.info.add_bos)

    def token_bytes(self, token: int) -> bytes:
        return self._backend.token_bytes(token)

    def rope(self, config: Config) -> RopeScaling:
        """How config's window is served on this model (YaRN above its trained window, by default)."""
        return plan_rope(config.rope_scaling, config.num_ctx, self._backend.info.n_ctx_train)

    def embed(self, config: Config, text: str) -> list[float]:
        return self._backend.embed(config, text)

    def close(self) -> None:
        """Nothing to release: the backend belongs to the pool."""
