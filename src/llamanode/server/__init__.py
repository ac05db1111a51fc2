"""`llamanode serve`: an OpenAI-compatible HTTP server over pooled, persistent KV sessions.

app = build_app(ServerSettings(port=0), model_path=None, config=Config())
server = make_server(app)        # bound; server.server_address has the port
server.serve_forever()
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..session import default_model_path
from .app import App, Route, ServerSettings, make_server
from .engine import PoolLike
from .errors import ApiError
from .model_info import ModelProbe

__all__ = ["ApiError", "App", "Route", "ServerSettings", "build_app", "make_server", "open_pool"]


def open_pool(
    model_path: str,
    config: Config,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
) -> PoolLike:
    """The workspace pool (llamanode.pool.SessionPool)."""
    from .interim_pool import InterimPool

    return InterimPool(model_path, config)


def build_app(
    settings: ServerSettings,
    model_path: str | Path | None = None,
    config: Config | None = None,
    *,
    store_dir: Path | None = None,
    memory_budget_bytes: int | None = None,
    disk_budget_bytes: int | None = None,
) -> App:
    """Load the model, open the pool and compile the chat template. The model is fixed from here on."""
    config = config or Config()
    path = str(model_path or default_model_path())
    probe = ModelProbe(path)
    try:
        pool = open_pool(path, config, store_dir, memory_budget_bytes, disk_budget_bytes)
    except BaseException:
        probe.close()
        raise
    try:
        return App(settings, pool, probe, config)
    except BaseException:
        pool.close()
        probe.close()
        raise
