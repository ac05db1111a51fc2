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

    def embed(self, config: Config, text: str) -> list[float]:
        return self._backend.embed(config, text)

    def close(self) -> None:
        """Nothing to release: the backend belongs to the pool."""
