"""`llamanode serve`: an OpenAI-compatible HTTP server over pooled, persistent KV sessions.

runtime = build_runtime(ServerSettings(port=0), model_path=None, config=Config())
sock = bind(runtime.settings.host, runtime.settings.port)   # sock.getsockname() has the port
serve(runtime, sock, on_started=lambda: ...)                  # until SIGTERM/SIGINT; then checkpoints

An API is one router module (openai_api.py, native_api.py, ops_api.py): pydantic request models
(schemas.py) and response models (responses.py), the shared checks in prepare.py, generations through
engine.generation() and, when streamed, streaming.stream_generation() with the API's StreamEncoder.
A new API adds its router in asgi.create_app, its error shape by path prefix in errors._SHAPES and its
streamed event models in responses.STREAM_MODELS.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..pool import SessionPool
from ..session import default_model_path
from .asgi import create_app
from .errors import ApiError
from .model_info import ModelProbe
from .runtime import Runtime
from .serving import bind, serve
from .settings import ServerSettings

__all__ = [
    "DEFAULT_MAX_LIVE",
    "ApiError",
    "Runtime",
    "ServerSettings",
    "bind",
    "build_runtime",
    "create_app",
    "open_pool",
    "serve",
]

DEFAULT_MAX_LIVE = 8


def open_pool(
    model_path: str,
    config: Config,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
    max_live: int = DEFAULT_MAX_LIVE,
) -> SessionPool:
    """The workspace pool, keeping a spare context ready for new sessions' workspaces (the context a fork
    for an agent's second session would otherwise open inside its request). Without a memory budget, one
    is set that keeps max_live workspaces live."""
    pool = SessionPool(
        model_path,
        config,
        store_dir=store_dir,
        memory_budget_bytes=memory_budget_bytes,
        disk_budget_bytes=disk_budget_bytes,
        spare_ahead=True,
    )
    if memory_budget_bytes is None:
        pool.memory_budget_bytes = pool.budget_for(max_live)
    return pool


def build_runtime(
    settings: ServerSettings,
    model_path: str | Path | None = None,
    config: Config | None = None,
    *,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
    max_live: int = DEFAULT_MAX_LIVE,
) -> Runtime:
    """Load the model, open the pool and compile the chat template. The model is fixed from here on."""
    config = config or Config()
    path = str(model_path or default_model_path())
    pool = open_pool(path, config, store_dir, memory_budget_bytes, disk_budget_bytes, max_live)
    try:
        return Runtime(settings, pool, ModelProbe(pool.backend), config)
    except BaseException:
        pool.close()
        raise
