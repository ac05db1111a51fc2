"""Request and response objects the routes see; the HTTP handler in app.py does the wire work."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ApiError

__all__ = [
    "ClientGone",
    "JsonResponse",
    "Request",
    "Response",
    "StreamResponse",
    "TextResponse",
    "parse_body",
    "socket_closed",
    "sse_event",
]

_M = TypeVar("_M", bound=BaseModel)


class ClientGone(Exception):
    """The client closed its connection; the work for it is abandoned."""


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    started: float
    client_gone: Callable[[], bool]
    log: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class JsonResponse:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None  # run once the response is written (or failed to be)


@dataclass
class TextResponse:
    text: str
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    """Server-sent events. Closing `events` (the writer does on a failed write) cancels the work."""

    events: Iterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None  # run once the stream is written (or abandoned)


Response = JsonResponse | TextResponse | StreamResponse


def sse_event(data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def parse_body(request: Request, model: type[_M]) -> _M:
    """Validate the JSON body against a model: 400 with the first problem's location otherwise."""
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from exc
    if not text.strip():
        raise ApiError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise _validation_error(exc) from exc


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {first['msg']}", code="invalid_json")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {loc!r}", param=loc, code="unknown_field")
    if kind == "model_type":
        return ApiError(400, "request body must be a JSON object", code="invalid_json")
    where = f"{loc}: " if loc else ""
    return ApiError(400, f"{where}{first['msg']}", param=loc or None, code="invalid_value")


def socket_closed(sock: socket.socket) -> bool:
    """True when the peer has closed the connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
