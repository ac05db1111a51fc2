"""The ASGI middleware in front of every route: refusals before any work, the request body, the
client's disconnect, and one JSON log line and metrics sample per request.

In order: shutting down (503), Host check (403; DNS rebinding), CORS preflight, API key (401), body
size (413) and read time (408). Then the app runs with the buffered body; a task watches for the
client leaving and cancels the request's work. Every refusal is a complete response, so uvicorn
keeps the connection usable (it discards an unread body).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .call import CLIENT_GONE, Call
from .errors import ApiError, from_exception, shutting_down
from .ops_api import PUBLIC_PATHS
from .runtime import Runtime
from .schemas import WORKSPACE_HEADER
from .web import error_response

__all__ = ["Guard"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_REFUSALS = frozenset({413, 429, 503})
CLIENT_CLOSED = 499  # logged (and counted) when the client left before the response was complete


class Guard:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.rt = runtime
        self.loopback_only = _is_loopback(runtime.settings.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call(scope["method"], scope["path"])
        scope.setdefault("state", {})["call"] = call
        headers = Headers(scope=scope)
        status: list[int] = []
        origin = headers.get("origin")
        cors = self._origin_allowed(origin)

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                extra: dict[str, str] = {}
                if "workspace" in call.log:
                    extra[WORKSPACE_HEADER] = str(call.log["workspace"])
                if cors and origin is not None:
                    extra |= {
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Expose-Headers": WORKSPACE_HEADER,
                        "Vary": "Origin",
                    }
                message = _with_headers(message, extra)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                call.response_complete = not call.client_gone  # uvicorn drops what is sent to a gone client
            await send(message)

        self.rt.calls.add(call)
        try:
            refusal = self._refuse(scope, headers, cors)
            if refusal is not None:
                await refusal(scope, receive, send_wrapped)
            else:
                await self._run(scope, receive, send_wrapped, call, status)
        finally:
            self.rt.calls.discard(call)
            await call.close()
            self._record(call, scope, status)

    def _refuse(self, scope: Scope, headers: Headers, cors: bool) -> Response | None:
        """The response to a request refused before any work, or None."""
        path = scope["path"]
        try:
            if self.rt.draining:
                raise shutting_down()
            self._check_host(headers)
            if scope["method"] == "OPTIONS":
                return self._preflight(cors)
            if path not in PUBLIC_PATHS:
                self._check_auth(headers)
            self._check_length(headers)
        except ApiError as error:
            return error_response(error, path)
        return None

    async def _run(self, scope: Scope, receive: Receive, send: Send, call: Call, status: list[int]) -> None:
        """Read the body, then run the app with it while a task watches for the client leaving."""
        try:
            body = await self._read_body(receive, call)
        except ApiError as error:
            await error_response(error, scope["path"])(scope, receive, send)
            return
        if body is None:  # the client left while sending
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(receive, call, gone))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, replay, send)
        except Exception as exc:  # escaped every handler: a bug, or a stream that failed mid-way
            call.log["exception"] = "".join(traceback.format_exception(exc)).strip()
            if not status:
                await error_response(from_exception(exc), scope["path"])(scope, replay, send)
        finally:
            watcher.cancel()

    async def _read_body(self, receive: Receive, call: Call) -> bytes | None:
        limit = self.rt.settings.max_body_bytes
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.rt.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        call.cancel.cancel(CLIENT_GONE)
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts)
        except TimeoutError:
            raise ApiError(
                408,
                f"timed out reading the request body ({self.rt.settings.body_timeout_s:g} s)",
                code="request_timeout",
                headers={"Connection": "close"},
            ) from None

    def _check_host(self, headers: Headers) -> None:
        if not self.loopback_only:
            return
        host = (headers.get("host") or "").strip()
        name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name.lower() not in _LOOPBACK_HOSTS:
            raise ApiError(
                403,
                f"Host {host!r} is not a loopback name; this server is bound to {self.rt.settings.host}",
                code="invalid_host",
            )

    def _check_auth(self, headers: Headers) -> None:
        key = self.rt.settings.api_key
        if not key:
            return
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        offered = [
            token.strip() if scheme.lower() == "bearer" else "",
            headers.get("x-api-key") or "",
        ]  # x-api-key: Anthropic's
        if not any(t and hmac.compare_digest(t.encode(), key.encode()) for t in offered):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer <key>, or x-api-key: <key>)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _check_length(self, headers: Headers) -> None:
        declared = headers.get("content-length")
        limit = self.rt.settings.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # uvicorn drains an unread body to keep the connection; not one many times the limit.
            close = {"Connection": "close"} if int(declared) > 2 * limit else {}
            raise ApiError(
                413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large", headers=close
            )

    def _preflight(self, cors: bool) -> Response:
        if not cors:
            raise ApiError(
                403, "CORS is off for this origin (start the server with --cors-origin)", code="cors_forbidden"
            )
        allow = {
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": f"Authorization, Content-Type, {WORKSPACE_HEADER}, X-Api-Key, "
            "Anthropic-Version, Anthropic-Beta",
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=allow)

    def _origin_allowed(self, origin: str | None) -> bool:
        allowed = self.rt.settings.cors_origins
        return origin is not None and (origin in allowed or "*" in allowed)

    def _record(self, call: Call, scope: Scope, status: list[int]) -> None:
        if call.client_gone and not call.response_complete:
            code = CLIENT_CLOSED
            call.log["client_gone"] = True
        else:
            code = status[0] if status else 500
        route = scope.get("route")
        label = str(getattr(route, "path", "unmatched"))
        m = self.rt.metrics
        m.requests.labels(route=label, status=str(code)).inc()
        if code in _REFUSALS:
            m.refusals.labels(status=str(code)).inc()
        if code == CLIENT_CLOSED:
            m.client_disconnects.inc()
        entry: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": call.method,
            "path": call.path,
            "status": code,
            "ms": round((time.perf_counter() - call.started) * 1000, 2),
        }
        self.rt.log(entry | call.log)


async def _watch(receive: Receive, call: Call, gone: asyncio.Event) -> None:
    """Wait for the client to leave; before the response is complete, that cancels the request's work."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not call.response_complete:
                call.cancel.cancel(CLIENT_GONE)
            gone.set()
            return


def _with_headers(message: Message, extra: dict[str, str]) -> Message:
    if not extra:
        return message
    present = {name.lower() for name, _ in message.get("headers", [])}
    added = [(k.lower().encode(), v.encode("latin-1")) for k, v in extra.items() if k.lower().encode() not in present]
    return {**message, "headers": [*message.get("headers", []), *added]}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
