"""`llamanode serve`: an OpenAI-compatible HTTP server over pooled, persistent KV sessions.

app = build_app(ServerSettings(port=0), model_path=None, config=Config())
server = make_server(app)        # bound; server.server_address has the port
server.serve_forever()
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..pool import SessionPool
from ..session import default_model_path
from .app import App, Route, ServerSettings, make_server
from .errors import ApiError
from .model_info import ModelProbe

__all__ = ["DEFAULT_MAX_LIVE", "ApiError", "App", "Route", "ServerSettings", "build_app", "make_server", "open_pool"]

DEFAULT_MAX_LIVE = 8


def open_pool(
    model_path: str,
    config: Config,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
    max_live: int = DEFAULT_MAX_LIVE,
) -> SessionPool:
    """The workspace pool. Without a memory budget, one is set that keeps max_live workspaces live."""
    pool = SessionPool(
        model_path,
        config,
        store_dir=store_dir,
        memory_budget_bytes=memory_budget_bytes,
        disk_budget_bytes=disk_budget_bytes,
    )
    if memory_budget_bytes is None:
        pool.memory_budget_bytes = pool.budget_for(max_live)
    return pool


def build_app(
    settings: ServerSettings,
    model_path: str | Path | None = None,
    config: Config | None = None,
    *,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
    max_live: int = DEFAULT_MAX_LIVE,
) -> App:
    """Load the model, open the pool and compile the chat template. The model is fixed from here on."""
    config = config or Config()
    path = str(model_path or default_model_path())
    pool = open_pool(path, config, store_dir, memory_budget_bytes, disk_budget_bytes, max_live)
    try:
        return App(settings, pool, ModelProbe(pool.backend), config)
    except BaseException:
        pool.close()
        raise
