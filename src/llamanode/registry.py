"""The backend registry: one loader (model path -> Backend) registered by an adapter, and the calls
that go through it. The core, not the adapter, wraps each context in a KVSession."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing

from .backends.base import Backend
from .config import Config
from .errors import SessionUnavailableError
from .kvsession import KVSession
from .session import default_model_path

__all__ = [
    "BackendLoader",
    "embed",
    "embed_available",
    "load_backend",
    "open_session",
    "session_available",
    "set_backend",
]

# (model path, config) -> Backend; the config carries load parameters (e.g. weight repacking)
BackendLoader = Callable[[str, Config], Backend]
ModelPath = str | os.PathLike[str] | None

_loader: BackendLoader | None = None


def set_backend(loader: BackendLoader | None) -> None:
    """Register the backend (a loader from a model path to a Backend handle); None unregisters."""
    global _loader
    _loader = loader


def session_available() -> bool:
    return _loader is not None


def embed_available() -> bool:
    """Whether embed() works: every backend embeds, so a backend must be registered."""
    return _loader is not None


def load_backend(model_path: ModelPath = None, config: Config | None = None) -> Backend:
    """A handle to the model at model_path (default: the embedded model), loaded as config asks;
    close() it when done."""
    if _loader is None:
        raise SessionUnavailableError("no session backend registered (is llama-cpp-python installed?)")
    return _loader(str(model_path or default_model_path()), config or Config())


def open_session(model_path: ModelPath = None, config: Config | None = None) -> KVSession:
    """A session on model_path (default: the embedded model); it holds its own handle to the model."""
    if _loader is None:
        raise SessionUnavailableError("no session backend registered (is llama-cpp-python installed?)")
    config = config or Config()
    backend = load_backend(model_path, config)
    try:
        context = backend.open_context(config)
    except BaseException:
        backend.close()
        raise
    return KVSession(context, config, on_close=backend.close)


def embed(model_path: ModelPath, config: Config | None, text: str) -> list[float]:
    """One embedding vector for text (deterministic, fixed dimension)."""
    if _loader is None:
        raise SessionUnavailableError("no embedding backend registered (is llama-cpp-python installed?)")
    config = config or Config()
    with closing(load_backend(model_path, config)) as backend:
        return backend.embed(config, text)
