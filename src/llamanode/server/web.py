"""What every API router shares: the strict-JSON route class, dependencies, response helpers.

FastAPI parses request bodies with json.loads, which accepts NaN and lone surrogates and turns
bad UTF-8 into an anonymous 400, and it only parses bodies sent as application/json. JsonRoute
hands its handler a request whose body is decoded strictly (typed 400s) whatever the Content-Type,
as the OpenAI API and llama-server accept it; FastAPI then validates the value as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import pydantic_core
from fastapi import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response

from .call import Call, current_call
from .errors import ApiError, shape_for
from .responses import ErrorResponse, dump_json
from .runtime import Runtime

__all__ = [
    "ERROR_RESPONSES",
    "CallDep",
    "JsonRoute",
    "RuntimeDep",
    "error_response",
    "event_stream",
    "json_response",
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorResponse,
        "description": "Refused: invalid request (400), API key (401), host or origin (403), unknown route, model or "
        "session (404), method (405), timeout reading the request (408), conflict (409), closed session (410), "
        "too large (413), queue full (429, see Retry-After)",
    },
    "5XX": {
        "model": ErrorResponse,
        "description": "Failed (500), or unavailable: queue timeout, memory budget full, shutting down (503, see "
        "Retry-After)",
    },
}


def event_stream(item: type[BaseModel], done: str | None = "[DONE]") -> dict[str, Any]:
    """The text/event-stream content of a response: each event's `data` is an `item` (or an error) as
    JSON, or the `done` marker. Read per event, as OpenAPI before 3.2 reads an event stream's schema."""
    as_json = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": _ref(item)}, {"$ref": _ref(ErrorResponse)}]},
    }
    data = {"anyOf": [{"const": done}, as_json]} if done is not None else as_json
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": data,
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }
    return {"text/event-stream": {"schema": event}}


def _ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


class _JsonBodyRequest(Request):
    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_json_headers"):
            headers = MutableHeaders(raw=list(self.scope["headers"]))
            headers["content-type"] = "application/json"
            self._json_headers = headers
        return self._json_headers

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from exc
            try:
                self._json = pydantic_core.from_json(text, allow_inf_nan=False)
            except ValueError as exc:
                raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
        return self._json


class JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            return await handler(_JsonBodyRequest(request.scope, request.receive))

        return run


async def current_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain-function dependency on a worker thread (a thread hop per request)
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(current_runtime)]
CallDep = Annotated[Call, Depends(current_call)]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response model (or core report dataclass) as application/json."""
    return Response(dump_json(value), status, headers, media_type="application/json")


def error_response(error: ApiError, path: str) -> Response:
    """The error in the shape of the API that path belongs to."""
    body = pydantic_core.to_json(shape_for(path)(error))
    return Response(body, error.status, error.headers, media_type="application/json")
