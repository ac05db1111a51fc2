"""LlamaCppBackend: one reference to a loaded GGUF model, behind the Backend protocol."""

from __future__ import annotations

from ...config import KV_CACHE_TYPES, Config, DecodeConfig
from ...errors import InvalidInputError, SessionClosedError
from ..base import BackendIdentity, ModelInfo
from .context import LlamaCppContext, tokenize
from .embedding import embed_text
from .model import LoadedModel, acquire_model, kv_bytes_per_token, release_model
from .native import lib
from .sampling import LlamaCppSampler

__all__ = ["KV_PAD", "LlamaCppBackend"]

KV_PAD = 256  # llama.cpp pads n_ctx to a multiple of this


class LlamaCppBackend:
    """Holds the model loaded until close(); every context it opens holds a reference of its own.

    Weight repacking is a load parameter: the handle loads the model with config's choice, and a context
    asked for with another choice loads (and shares) the model loaded that way.
    """

    def __init__(self, model_path: str, config: Config) -> None:
        self._model: LoadedModel | None = acquire_model(model_path, config.weight_repack)
        self.info = _model_info(self._model)

    def identity(self, config: Config) -> BackendIdentity:
        return self._loaded().identity(config, self.padded_ctx(config.num_ctx))

    def padded_ctx(self, num_ctx: int) -> int:
        return -(-num_ctx // KV_PAD) * KV_PAD

    def open_context(self, config: Config) -> LlamaCppContext:
        model = acquire_model(str(self._loaded().path), config.weight_repack)
        try:
            return LlamaCppContext(model, config)  # owns the reference from here: close() releases it
        except BaseException:
            release_model(model)
            raise

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return tokenize(self._loaded(), text, add_bos)

    def token_bytes(self, token: int) -> bytes:
        model = self._loaded()
        n_vocab = lib().llama_vocab_n_tokens(model.vocab)
        if not 0 <= token < n_vocab:  # llama.cpp would read out of bounds
            raise InvalidInputError(f"token id {token} is outside the vocabulary (0..{n_vocab - 1})")
        return model.token_bytes(token)

    def check_grammar(self, config: DecodeConfig) -> None:
        if config.grammar is None and config.json_schema is None:
            return
        model = self._loaded()
        LlamaCppSampler(0, model.vocab, lib().llama_vocab_n_tokens(model.vocab), config).close()

    def embed(self, config: Config, text: str) -> list[float]:
        return embed_text(str(self._loaded().path), config, text)

    def close(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            release_model(model)

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            raise SessionClosedError("the model handle is closed")
        return self._model


def _model_info(model: LoadedModel) -> ModelInfo:
    L = lib()
    vocab = model.vocab
    bos, eos = L.llama_vocab_bos(vocab), L.llama_vocab_eos(vocab)
    return ModelInfo(
        path=str(model.path),
        digest=model.digest,
        description=model.description,
        chat_template=model.chat_template,
        bos_token=model.token_bytes(bos).decode("utf-8", "replace") if bos >= 0 else "",
        eos_token=model.token_bytes(eos).decode("utf-8", "replace") if eos >= 0 else "",
        add_bos=bool(L.llama_vocab_get_add_bos(vocab)),
        add_eos=bool(L.llama_vocab_get_add_eos(vocab)),
        n_ctx_train=int(L.llama_model_n_ctx_train(model.handle)),
        kv_bytes_per_token={t: kv_bytes_per_token(model, t) for t in KV_CACHE_TYPES if t},
    )
