"""Server settings: what `llamanode serve` flags set."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_bytes: int = 2 * 1024 * 1024
    parallel: int = 2
    max_queue: int = 16
    queue_timeout_s: float = 300.0
    route_min_tokens: int = 32
    fork_min_tokens: int = 256  # a new named session forks the workspace sharing this many tokens (0: never)
    aliases: tuple[str, ...] = ()
    warm_next: bool = True  # after a chat answer, prewarm it as the next request will send it back
    log_requests: bool = True
    keep_billing_header: bool = False  # /v1/messages: render Claude Code's per-session billing line (anthropic_convert)
    # Connections: limits and timeouts.
    max_connections: int = 256  # open connections; more are answered 503 and closed
    keep_alive_s: float = 15.0  # an idle connection between requests is closed after this
    header_timeout_s: float = 10.0  # from a request's first byte (or the connection) to its last header
    body_timeout_s: float = 60.0  # from the headers to the last byte of the body
    shutdown_timeout_s: float = 30.0  # on SIGTERM/SIGINT, in-flight requests get this long to finish
