"""llama.cpp adapter (llama-cpp-python's low-level API). The only package that imports llama_cpp,
and only inside functions, so `import llamanode` works without the native library."""

from __future__ import annotations

import importlib.util

from ...config import Config

__all__ = ["available", "register"]


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _open(model_path: str, config: Config):  # type: ignore[no-untyped-def]
    from .context import open_llamacpp_session

    return open_llamacpp_session(model_path, config)


def _embed(model_path: str, config: Config, text: str) -> list[float]:
    from .embedding import embed_text

    return embed_text(model_path, config, text)


def register() -> None:
    """Register this adapter's session factory and embedding function, if llama_cpp is there."""
    from ...session import set_embed_func, set_session_factory

    if available():
        set_session_factory(_open)
        set_embed_func(_embed)
