"""Loading llama_cpp once: quiet logs, backend init, build identity."""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

_init_lock = threading.Lock()
_LOG_CALLBACK: Any = None  # kept alive: llama.cpp holds a pointer to it


@functools.cache
def lib() -> ModuleType:
    """The ctypes module, with llama.cpp's logging silenced and the backend initialised."""
    global _LOG_CALLBACK
    with _init_lock:
        from llama_cpp import llama_cpp as L

        _LOG_CALLBACK = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(_LOG_CALLBACK, None)
        L.llama_backend_init()
        return L


@functools.cache
def build_id() -> str:
    """llama-cpp-python version plus a digest of the loaded libllama binary: changes on rebuild."""
    import llama_cpp

    L = lib()
    lib_path = Path(L._lib._name)  # the CDLL actually loaded
    digest = hashlib.sha256(lib_path.read_bytes()).hexdigest()[:16]
    return f"llama-cpp-python-{llama_cpp.__version__}+{digest}"


def system_info() -> str:
    return str(lib().llama_print_system_info().decode("utf-8", "replace")).strip()
