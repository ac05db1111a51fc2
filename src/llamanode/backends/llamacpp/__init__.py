"""llama.cpp adapter (llama-cpp-python's low-level API). The only package that imports llama_cpp,
and only inside functions, so `import llamanode` works without the native library."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ...config import Config

if TYPE_CHECKING:
    from .backend import LlamaCppBackend

__all__ = ["available", "register"]


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _load(model_path: str, config: Config) -> LlamaCppBackend:
    from .backend import LlamaCppBackend

    return LlamaCppBackend(model_path, config)


def register() -> None:
    """Register this adapter as the backend, if llama_cpp is there."""
    from ...registry import set_backend

    if available():
        set_backend(_load)
