"""uvicorn's h11 protocol with three additions uvicorn lacks (it parses, frames and keeps connections
alive; we add only these):

- a header-read timeout: uvicorn times out idle keep-alive connections but not a request whose
  headers trickle in, so a slow client could hold a connection forever; the timer runs from a
  request's first byte (or the connection's start) to its last header, then the connection closes
  (h11 cannot answer a request it has not parsed);
- protocol errors (malformed request, headers too large) answered in the API's JSON error shape and
  logged like any request, not as uvicorn's plain-text 400;
- a connection limit answered with a JSON 503 (uvicorn's own limit answers plain text).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import pydantic_core
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import ApiError, openai_error
from .runtime import Runtime
from .web import error_response

__all__ = ["MAX_HEADER_BYTES", "protocol_for"]

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; more is answered 431


class _Protocol(H11Protocol):
    runtime: ClassVar[Runtime]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.runtime.settings.max_connections:
            self.app = partial(_too_many_connections, self.runtime)  # this connection's requests: 503, then close
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE or not self.conn.trailing_data[0]:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            timeout = self.runtime.settings.header_timeout_s
            self._header_timer = self.loop.call_later(timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        _record(self.runtime, 408, "header_timeout", self.client)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (or headers over h11's size limit): a JSON error, then close."""
        too_large = len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES
        status, code = (431, "headers_too_large") if too_large else (400, "invalid_http")
        error = ApiError(status, f"{msg[:-1] if msg.endswith('.') else msg}: not valid HTTP/1.1", code=code)
        body = pydantic_core.to_json(openai_error(error))
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            reason = HTTPStatus(status).phrase.encode()
            response = h11.Response(status_code=status, headers=headers, reason=reason)
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:
            pass  # mid-response: nothing more can be said on this connection
        _record(self.runtime, status, code, self.client)
        self.transport.close()


async def _too_many_connections(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    error = ApiError(
        503,
        "too many open connections; retry later",
        "server_error",
        "too_many_connections",
        headers={"Connection": "close", "Retry-After": "1"},
    )
    _record(runtime, 503, "too_many_connections", scope.get("client"))
    await error_response(error, scope["path"])(scope, receive, send)


def _record(runtime: Runtime, status: int, kind: str, client: Any) -> None:
    runtime.metrics.protocol_errors.labels(kind=kind).inc()
    runtime.log(
        {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": None,
            "path": None,
            "status": status,
            "ms": 0,
            "protocol_error": kind,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
    )


def protocol_for(runtime: Runtime) -> type[H11Protocol]:
    """The protocol class for one server (uvicorn instantiates it per connection)."""
    return type("LlamanodeH11Protocol", (_Protocol,), {"runtime": runtime})
