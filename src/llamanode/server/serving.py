"""Running the server on uvicorn: bind, serve, and shut down gracefully.

On SIGTERM or SIGINT uvicorn stops accepting and closes idle connections; requests in flight get
`shutdown_timeout_s` to finish, then the rest are cancelled (streams end with a typed error event).
When every connection is closed the pool is checkpointed and the process exits 0. A second
signal exits at once (the store is crash-safe: snapshots are written to a temp file and renamed).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from .. import __version__
from .asgi import create_app
from .protocol import MAX_HEADER_BYTES, protocol_for
from .runtime import Runtime

__all__ = ["bind", "serve"]

BACKLOG = 128
_SHUTDOWN_GRACE_S = 10.0  # past the drain deadline, for cancelled requests to send their last event


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one: read getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then (without it,
    # Nagle plus delayed ACKs hold a response's second write for 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Second: exit now. (Not re-raised after a graceful exit: that exits 0.)"""
        if self.should_exit:
            self.runtime.event("forced_exit", signal=sig)
            sys.stderr.flush()
            os._exit(128 + sig)
        self.runtime.event("shutting_down", signal=sig, deadline_s=self.runtime.settings.shutdown_timeout_s)
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.drain(self.runtime.settings.shutdown_timeout_s)
        await super().shutdown(sockets)


def serve(runtime: Runtime, sock: socket.socket, on_started: Callable[[], None]) -> None:
    """Serve on sock until a signal; then drain, checkpoint the pool and return."""
    settings = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        http=protocol_for(runtime),
        loop="asyncio",
        lifespan="off",
        log_config=None,
        log_level="error",  # protocol errors and timeouts are logged as JSON lines instead
        access_log=False,
        server_header=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: nothing here depends on the client's address
        headers=[("server", f"llamanode/{__version__}")],
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_timeout_s + _SHUTDOWN_GRACE_S,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=BACKLOG,
    )
    server = _Server(config, runtime, on_started)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        runtime.close()
