"""The server: settings, the route table, and the stdlib HTTP handler (SSE, disconnects, limits)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..chat import ChatTemplate, discover_special_tokens
from ..config import Config
from ..errors import LlamaNodeError
from ..workspace_id import is_workspace_id
from .admission import Admission
from .engine import Engine, PoolLike
from .errors import ApiError, from_exception
from .http import ClientGone, JsonResponse, Request, Response, StreamResponse, TextResponse, socket_closed, sse_event
from .metrics import Metrics
from .model_info import ModelInfo, ModelProbe
from .native_routes import NativeRoutes
from .openai_routes import WORKSPACE_HEADER, OpenAIRoutes
from .routing import PromptRouter
from .schemas import WORKSPACE_ID_PATTERN

__all__ = ["App", "Route", "ServerSettings", "make_server"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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
    aliases: tuple[str, ...] = ()
    idle_timeout_s: float = 120.0
    warm_next: bool = True  # after a chat answer, prefill it as the next request will send it back
    log_requests: bool = True


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[Request], Response]
    summary: str
    public: bool = False
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))


class App:
    """Everything a request needs: pool, engine, template, metrics, routes."""

    def __init__(
        self,
        settings: ServerSettings,
        pool: PoolLike,
        probe: ModelProbe,
        config: Config,
        log_stream: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.model_probe = probe
        self.model_info: ModelInfo = probe.info
        self.model_path = probe.info.path
        self.model_id = probe.info.model_id
        self.model_names = frozenset({self.model_id, *settings.aliases})
        self.config = config
        self.num_ctx = config.num_ctx
        self.started_at = int(time.time())
        self.fingerprint = f"llamanode-{__version__}-{probe.info.digest[:12]}"
        self.metrics = Metrics()
        self.admission = Admission(settings.parallel, settings.max_queue, settings.queue_timeout_s)
        self.engine = Engine(pool, self.admission, self.metrics, config.num_ctx)
        self.router = PromptRouter(pool, settings.route_min_tokens)
        info = probe.info
        specials = discover_special_tokens(info.chat_template or "", pool.tokenize, (info.bos_token, info.eos_token))
        self.template = ChatTemplate(
            info.chat_template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            add_bos=info.add_bos,
            add_eos=info.add_eos,
            special_tokens=specials,
        )
        self._log_stream = log_stream if log_stream is not None else sys.stderr
        self._log_lock = threading.Lock()
        self._openapi: dict[str, Any] | None = None
        self._describe_metrics()
        self.routes = self._routes()

    # -- routes ---------------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        oa = OpenAIRoutes(self)
        na = NativeRoutes(self)
        base = "/v1/llamanode/sessions"
        return [
            Route("GET", "/health", self.health, "Liveness and model summary (no API key needed)", public=True),
            Route("GET", "/metrics", self.metrics_text, "Prometheus metrics"),
            Route("GET", "/openapi.json", self.openapi, "This API's OpenAPI document"),
            Route("GET", "/v1/models", oa.models, "List the served model"),
            Route("GET", "/v1/models/{model}", oa.model, "Describe the served model"),
            Route("POST", "/v1/chat/completions", oa.chat_completions, "Chat completion (OpenAI-compatible)"),
            Route("POST", "/v1/completions", oa.completions, "Text completion (OpenAI-compatible)"),
            Route("POST", "/v1/embeddings", oa.embeddings, "Embeddings (OpenAI-compatible)"),
            Route("GET", base, na.list_sessions, "List sessions (workspaces)"),
            Route("POST", base, na.create_session, "Create a session"),
            Route("GET", base + "/{id}", na.get_session, "Describe a session"),
            Route("DELETE", base + "/{id}", na.delete_session, "Drop a session and its snapshot"),
            Route("POST", base + "/{id}/prefix", na.prefix, "ensure_prefix: keep the longest resident prefix"),
            Route("POST", base + "/{id}/suffix", na.suffix, "prefill_suffix: append volatile text"),
            Route("POST", base + "/{id}/decode", na.decode, "decode: generate (JSON or server-sent events)"),
            Route("GET", base + "/{id}/context", na.context, "explain_context: what is resident and why"),
            Route("POST", base + "/{id}/fork", na.fork, "Fork a session into a new one"),
            Route("POST", base + "/{id}/snapshot", na.snapshot, "Write the session's snapshot to disk"),
        ]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            found = route.regex.match(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise ApiError(
                405,
                f"{method} is not allowed on {path}",
                code="method_not_allowed",
                headers={"Allow": ", ".join(allowed)},
            )
        raise ApiError(404, f"no route {path}", code="not_found")

    # -- operations -----------------------------------------------------------------------------
    def health(self, request: Request) -> Response:
        stats = self.admission.stats()
        return JsonResponse(
            {
                "status": "ok",
                "model": self.model_id,
                "queued": stats.queued,
                "active": stats.active,
                "version": __version__,
            }
        )

    def metrics_text(self, request: Request) -> Response:
        return TextResponse(self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            from .openapi import build_openapi

            self._openapi = build_openapi(self)
        return JsonResponse(self._openapi)

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("llamanode_requests_total", "counter", "HTTP requests by route and status")
        m.describe("llamanode_refusals_total", "counter", "Requests refused before any work (queue full, too large...)")
        m.describe("llamanode_client_disconnects_total", "counter", "Streams cancelled because the client went away")
        m.describe("llamanode_warm_next_tokens_total", "counter", "Answer tokens prefilled ahead of the next turn")

        def collect() -> list[tuple[str, str, dict[str, str], float]]:
            stats = self.admission.stats()
            rows: list[tuple[str, str, dict[str, str], float]] = [
                ("llamanode_queue_depth", "Requests waiting for a workspace or a compute slot", {}, stats.queued),
                ("llamanode_active_requests", "Requests running", {}, stats.active),
            ]
            pool_stats = self.pool.stats()
            live = getattr(pool_stats, "live_workspaces", 0)
            evicted = getattr(pool_stats, "evicted_workspaces", 0)
            rows.append(("llamanode_workspaces", "Workspaces by state", {"state": "live"}, live))
            rows.append(("llamanode_workspaces", "Workspaces by state", {"state": "evicted"}, evicted))
            for name in sorted(getattr(pool_stats, "__dataclass_fields__", {})):
                value = getattr(pool_stats, name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rows.append((f"llamanode_pool_{name}", f"Workspace pool: {name}", {}, float(value)))
            for kind, seconds in sorted(getattr(pool_stats, "transfer_seconds", {}).items()):
                help_text = "Seconds spent moving workspace states, by kind (export, read, import, wait, write)"
                rows.append(("llamanode_pool_transfer_seconds", help_text, {"kind": kind}, float(seconds)))
            return rows

        m.add_collector(collect)

    def log_request(self, entry: dict[str, Any]) -> None:
        if not self.settings.log_requests:
            return
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._log_lock:
            self._log_stream.write(line + "\n")
            self._log_stream.flush()

    def close(self) -> None:
        self.pool.close()
        self.model_probe.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"llamanode/{__version__}"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.settimeout(self.server.app.settings.idle_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one structured line per request instead (App.log_request)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def __getattr__(self, name: str) -> Any:
        """Any other method (HEAD, TRACE, ...) gets 405 or 404 from the router, never a bare 501."""
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    # -- one request ---------------------------------------------------------------------------
    def _handle(self) -> None:
        app = self.server.app
        started = time.perf_counter()
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            params={},
            query=parse_qs(parts.query),
            headers=self.headers,  # type: ignore[arg-type]
            body=b"",
            started=started,
            client_gone=lambda: socket_closed(self.connection),
        )
        route_name = "unmatched"
        response: Response | None
        try:
            self._check_host()
            if self.command == "OPTIONS":
                response = self._preflight()
            else:
                route, params = app.match(self.command, parts.path)
                route_name = route.path
                _check_params(params)
                request.params = params
                if not route.public:
                    self._check_auth()
                request.body = self._read_body()
                response = route.handler(request)
        except ClientGone:
            response = None
            request.log["client_gone"] = True
            self.close_connection = True
        except ApiError as exc:
            response = self._error(exc)
        except LlamaNodeError as exc:
            response = self._error(from_exception(exc))
        except Exception as exc:  # a bug: answer 500 and log the traceback as one JSON line
            request.log["exception"] = "".join(traceback.format_exception(exc)).strip()
            response = self._error(from_exception(exc))
        status = response.status if response is not None else 499  # 499: client closed the request
        if response is not None:
            if "workspace" in request.log:
                response.headers.setdefault(WORKSPACE_HEADER, str(request.log["workspace"]))
            try:
                self._send(response, request)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                request.log["client_gone"] = True
                self.close_connection = True
            finally:
                after = getattr(response, "after", None)
                if after is not None:
                    after()
        app.metrics.inc("llamanode_requests_total", labels={"route": route_name, "status": str(status)})
        if status in (413, 429, 503):
            app.metrics.inc("llamanode_refusals_total", labels={"status": str(status)})
        if request.log.get("client_gone"):
            app.metrics.inc("llamanode_client_disconnects_total")
        app.log_request(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "method": self.command,
                "path": parts.path,
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                **request.log,
            }
        )

    def _error(self, exc: ApiError) -> JsonResponse:
        return JsonResponse(exc.body(), exc.status, dict(exc.headers))

    def _check_host(self) -> None:
        bound = self.server.app.settings.host
        if not _is_loopback(bound):
            return
        host = (self.headers.get("Host") or "").strip()
        name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name.lower() not in _LOOPBACK_HOSTS:
            raise ApiError(
                403, f"Host {host!r} is not a loopback name; this server is bound to {bound}", code="invalid_host"
            )

    def _check_auth(self) -> None:
        key = self.server.app.settings.api_key
        if not key:
            return
        given = self.headers.get("Authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _read_body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "chunked request bodies are not accepted; send Content-Length", code="length_required")
        if length_text is None:
            if self.command in ("POST", "PUT", "PATCH"):
                self.close_connection = True
                raise ApiError(411, "Content-Length is required", code="length_required")
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError as exc:
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length_text!r}", code="invalid_request") from exc
        limit = self.server.app.settings.max_body_bytes
        if length > limit:
            self.close_connection = True  # the body stays unread
            raise ApiError(413, f"request body is {length} bytes; the limit is {limit}", code="body_too_large")
        if not length:
            return b""
        try:
            body = self.rfile.read(length)
        except (TimeoutError, ConnectionError) as exc:
            self.close_connection = True
            raise ApiError(408, "timed out reading the request body", code="request_timeout") from exc
        if len(body) < length:
            self.close_connection = True
            raise ApiError(400, f"request body ended after {len(body)} of {length} bytes", code="invalid_request")
        return body

    def _preflight(self) -> Response:
        origin = self.headers.get("Origin")
        if not self._origin_allowed(origin):
            raise ApiError(
                403, "CORS is off for this origin (start the server with --cors-origin)", code="cors_forbidden"
            )
        return JsonResponse(
            None,
            204,
            {
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": f"Authorization, Content-Type, {WORKSPACE_HEADER}",
                "Access-Control-Max-Age": "600",
            },
        )

    def _origin_allowed(self, origin: str | None) -> bool:
        allowed = self.server.app.settings.cors_origins
        return origin is not None and (origin in allowed or "*" in allowed)

    def _common_headers(self, headers: dict[str, str]) -> None:
        origin = self.headers.get("Origin")
        if self._origin_allowed(origin):
            assert origin is not None
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = WORKSPACE_HEADER
            headers["Vary"] = "Origin"

    def _send(self, response: Response, request: Request) -> None:
        headers = dict(response.headers)
        self._common_headers(headers)
        if isinstance(response, StreamResponse):
            self._send_stream(response, headers, request)
            return
        if isinstance(response, TextResponse):
            payload = response.text.encode("utf-8")
            headers["Content-Type"] = response.content_type
        elif response.status == 204:
            payload = b""
        else:
            payload = json.dumps(response.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.close_connection:
            headers["Connection"] = "close"
        head = self._head(response.status, {**headers, "Content-Length": str(len(payload))})
        self.wfile.write(head + (payload if self.command != "HEAD" else b""))

    def _send_stream(self, response: StreamResponse, headers: dict[str, str], request: Request) -> None:
        headers.update(
            {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Transfer-Encoding": "chunked"}
        )
        events = response.events
        pending = self._head(response.status, headers)
        try:
            for event in events:
                self.wfile.write(pending + b"%x\r\n%s\r\n" % (len(event), event))
                pending = b""
            self.wfile.write(pending + b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            request.log["client_gone"] = True
            self.close_connection = True
        except Exception as exc:  # failed mid-stream: an error event (or response), then the end
            error = exc if isinstance(exc, ApiError) else from_exception(exc)
            if not isinstance(exc, ApiError | LlamaNodeError):
                request.log["exception"] = "".join(traceback.format_exception(exc)).strip()
            request.log["stream_error"] = error.code
            self.close_connection = True
            event = sse_event(error.body())
            self.wfile.write(pending + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {self.server_version}", f"Date: {self.date_time_string()}"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _check_params(params: dict[str, str]) -> None:
    workspace = params.get("id")
    if workspace is not None and not is_workspace_id(workspace):
        raise ApiError(400, f"session id must match {WORKSPACE_ID_PATTERN}", code="invalid_workspace", param="id")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def make_server(app: App) -> ThreadingHTTPServer:
    """Bind (port 0 picks a free one: read server.server_address) without serving yet."""
    return _Server((app.settings.host, app.settings.port), app)
