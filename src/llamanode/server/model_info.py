"""What the server needs to know about its model before any workspace exists.

Reads the GGUF once through the llama.cpp adapter's shared model loader (the pool's sessions
share the same loaded weights): the chat template, BOS/EOS text and policy, and a vocabulary
to check grammars against before a request touches any workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DecodeConfig

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
    """Holds one reference to the loaded model for the server's lifetime."""

    def __init__(self, model_path: str | Path, weight_repack: str = "auto") -> None:
        from ..backends.llamacpp.model import acquire_model
        from ..backends.llamacpp.native import lib

        L = lib()
        self._model: Any = acquire_model(str(model_path), weight_repack)  # the pool's choice: one copy
        m = self._model
        vocab = m.vocab
        bos, eos = L.llama_vocab_bos(vocab), L.llama_vocab_eos(vocab)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.info = ModelInfo(
            path=str(m.path),
            model_id=Path(m.path).name.removesuffix(".gguf"),
            digest=m.digest,
            description=m.description,
            chat_template=m.chat_template,
            bos_token=m.token_bytes(bos).decode("utf-8", "replace") if bos >= 0 else "",
            eos_token=m.token_bytes(eos).decode("utf-8", "replace") if eos >= 0 else "",
            add_bos=bool(L.llama_vocab_get_add_bos(vocab)),
            add_eos=bool(L.llama_vocab_get_add_eos(vocab)),
        )

    def check_grammar(self, config: DecodeConfig) -> None:
        """Compile the config's grammar (or JSON schema) against the vocabulary; GrammarError if it fails."""
        if config.grammar is None and config.json_schema is None:
            return
        from ..backends.llamacpp.sampling import LlamaCppSampler

        LlamaCppSampler(0, self._model.vocab, self.n_vocab, config).close()

    def close(self) -> None:
        if self._model is not None:
            from ..backends.llamacpp.model import release_model

            release_model(self._model)
            self._model = None
