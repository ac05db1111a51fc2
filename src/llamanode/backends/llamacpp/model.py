"""Loaded models, shared per path and reference-counted, with their identity digests."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Config
from ...digest_cache import file_digest
from ...errors import SessionUnavailableError
from ...manifest import byte_hash
from ...rope import RopeScaling, plan_rope
from ..base import BackendIdentity
from .cpu import RepackDecision, weight_repack_for
from .native import build_id, lib

__all__ = ["LoadedModel", "acquire_model", "release_model"]

_models: dict[tuple[str, bool], LoadedModel] = {}  # (path, repack): repacking is a load parameter
_models_lock = threading.Lock()


@dataclass
class LoadedModel:
    path: Path
    handle: int
    vocab: int
    digest: str
    tokenizer_digest: str
    chat_template: str | None
    description: str
    vocab_add_bos: bool
    repack: RepackDecision
    n_ctx_train: int  # read at load: a YaRN context rewrites llama.cpp's copy (n_ctx_orig / freq_scale)
    refs: int = 0
    pieces: dict[int, bytes] = field(default_factory=dict)

    def token_bytes(self, token: int) -> bytes:
        piece = self.pieces.get(token)
        if piece is None:
            piece = _piece(self.vocab, token)
            self.pieces[token] = piece
        return piece

    def rope(self, config: Config) -> RopeScaling:
        return plan_rope(config.rope_scaling, config.num_ctx, self.n_ctx_train)

    def identity(self, config: Config, n_ctx: int) -> BackendIdentity:
        rope = self.rope(config)
        # repacked weights take other matmul kernels, so they write other KV numbers (contexts opened with
        # config load the model with config's choice: see LlamaCppBackend.open_context)
        repack = weight_repack_for(config.weight_repack).enabled
        shaping = {"build": build_id(), **config.kv_shaping(), "weight_repack": repack}
        shaping |= {"rope": rope.key()} if rope.scaled else {}
        runtime = byte_hash(json.dumps(shaping, sort_keys=True))
        template = self.chat_template if config.prompt_format == "model" else None
        template_key = {"format": config.prompt_format, "template": template, "caller": config.prompt_template_digest}
        return BackendIdentity(
            model_path=str(self.path),
            model_digest=self.digest,
            tokenizer_digest=self.tokenizer_digest,
            build_id=build_id(),
            runtime_digest=runtime,
            template_digest=byte_hash(json.dumps(template_key, sort_keys=True)),
            add_bos=self.vocab_add_bos and not config.disable_bos,
            chat_template=self.chat_template,
            n_ctx=n_ctx,
            description=self.description,
            rope=rope,
        )


def _piece(vocab: int, token: int) -> bytes:
    L = lib()
    buf = ctypes.create_string_buffer(64)
    n = L.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = L.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


def _tokenizer_digest(vocab: int) -> str:
    L = lib()
    h = hashlib.sha256()
    n = L.llama_vocab_n_tokens(vocab)
    specials = [
        L.llama_vocab_bos(vocab),
        L.llama_vocab_eos(vocab),
        L.llama_vocab_get_add_bos(vocab),
        L.llama_vocab_get_add_eos(vocab),
    ]
    h.update(json.dumps([n, L.llama_vocab_type(vocab), *map(int, specials)]).encode())
    for token in range(n):
        h.update(_piece(vocab, token))
        h.update(int(L.llama_vocab_get_attr(vocab, token)).to_bytes(4, "little", signed=True))
    return h.hexdigest()


def _meta(handle: int, key: bytes) -> str:
    L = lib()
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_meta_val_str(handle, key, buf, len(buf))
    return "" if n < 0 else buf.value.decode("utf-8", "replace")


def _load(path: Path, repack: RepackDecision) -> LoadedModel:
    L = lib()
    if not path.is_file():
        raise SessionUnavailableError(f"model file not found: {path}")
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = repack.enabled
    handle = L.llama_model_load_from_file(os.fsencode(path), params)
    if not handle:
        raise SessionUnavailableError(f"llama.cpp could not load {path} (not a GGUF model?)")
    vocab = L.llama_model_get_vocab(handle)
    desc = ctypes.create_string_buffer(256)
    L.llama_model_desc(handle, desc, len(desc))
    template = L.llama_model_chat_template(handle, None)
    name = _meta(handle, b"general.name")
    return LoadedModel(
        path=path,
        handle=handle,
        vocab=vocab,
        digest=file_digest(path),
        tokenizer_digest=_tokenizer_digest(vocab),
        chat_template=template.decode("utf-8") if template else None,
        description=f"{name} ({desc.value.decode('utf-8', 'replace')})".strip(),
        vocab_add_bos=bool(L.llama_vocab_get_add_bos(vocab)),
        repack=repack,
        n_ctx_train=int(L.llama_model_n_ctx_train(handle)),
    )


def acquire_model(model_path: str, weight_repack: str = "auto") -> LoadedModel:
    """The loaded model for a path and repack setting, loading it on first use; pair with release_model."""
    path = Path(model_path).resolve()
    repack = weight_repack_for(weight_repack)
    with _models_lock:
        model = _models.get((str(path), repack.enabled))
        if model is None:
            model = _load(path, repack)
            _models[(str(path), repack.enabled)] = model
        model.refs += 1
        return model


def release_model(model: LoadedModel) -> None:
    """Drop one reference; the weights are freed when the last context closes."""
    with _models_lock:
        model.refs -= 1
        if model.refs == 0:
            _models.pop((str(model.path), model.repack.enabled), None)
            lib().llama_model_free(model.handle)


def kv_bytes_per_token(model: LoadedModel, kv_type: str) -> float:
    L = lib()
    h = model.handle
    head_dim = L.llama_model_n_embd(h) / max(L.llama_model_n_head(h), 1)
    per_layer = 2 * L.llama_model_n_head_kv(h) * head_dim  # K and V
    size: dict[str, Any] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
    return float(L.llama_model_n_layer(h) * per_layer * size[kv_type])
