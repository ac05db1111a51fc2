"""The ASGI application: FastAPI with the API routers, one error mapping, and the guard in front."""

from __future__ import annotations

import traceback
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from .. import __version__
from ..errors import LlamaNodeError
from . import anthropic_api, llama_api, native_api, openai_api, ops_api, responses_api
from .call import SHUTDOWN, Call, Cancelled
from .errors import ApiError, from_exception, from_validation, shutting_down
from .guard import CLIENT_CLOSED, Guard
from .responses import STREAM_MODELS
from .runtime import Runtime
from .schemas import WORKSPACE_HEADER
from .web import error_response

__all__ = ["create_app"]


def create_app(runtime: Runtime) -> ASGIApp:
    api = FastAPI(
        title="llamanode",
        version=__version__,
        description=(
            "OpenAI-compatible API plus native session routes over persistent, workspace-scoped KV sessions. "
            f"Serving {runtime.model_id}. Route a conversation to a workspace with the {WORKSPACE_HEADER} header "
            "(or a session key: previous_response_id, prompt_cache_key, user); without any, the workspace sharing "
            "the longest prompt prefix is used."
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        separate_input_output_schemas=False,
    )
    api.state.runtime = runtime
    api.state.sessions = native_api.Sessions(runtime)
    api.state.responses = responses_api.ResponseStore()
    for module in (ops_api, openai_api, responses_api, anthropic_api, native_api, llama_api):
        api.include_router(module.router)
    _add_error_handlers(api)
    _customise_openapi(api, runtime)
    return Guard(api, runtime)


def _add_error_handlers(api: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(_http_error(exc, request.url.path), request.url.path)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(from_validation(exc.errors()), request.url.path)

    async def typed_error(request: Request, exc: Exception) -> Response:
        return error_response(from_exception(exc), request.url.path)

    async def cancelled(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Cancelled)
        if exc.reason == SHUTDOWN:
            return error_response(shutting_down(), request.url.path)
        return Response(status_code=CLIENT_CLOSED)  # nobody is listening

    async def bug(request: Request, exc: Exception) -> Response:
        call = request.scope["state"].get("call")
        if isinstance(call, Call):
            call.log["exception"] = "".join(traceback.format_exception(exc)).strip()
        return error_response(from_exception(exc), request.url.path)

    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(LlamaNodeError, typed_error)
    api.add_exception_handler(Cancelled, cancelled)
    api.add_exception_handler(Exception, bug)


def _http_error(exc: HTTPException, path: str) -> ApiError:
    """Ours as they are; Starlette's routing 404 and 405 in our words."""
    if isinstance(exc, ApiError):
        return exc
    if exc.status_code == 404:
        return native_api.explain_not_found(path) or ApiError(404, f"no route {path}", code="not_found")
    if exc.status_code == 405:
        return ApiError(405, f"method not allowed on {path}", code="method_not_allowed", headers=exc.headers)
    return ApiError(exc.status_code, str(exc.detail), code="invalid_request")


def _customise_openapi(api: FastAPI, runtime: Runtime) -> None:
    """FastAPI's document, plus the streamed event models (FastAPI only knows a route's JSON response),
    and what only the running server knows: the model names it accepts and answers with (so clients
    and fuzzers can know) and whether an API key is required."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        mode: JsonSchemaMode = "serialization"
        missing = [(m, mode) for m in STREAM_MODELS if m.__name__ not in schemas]
        _, extra = models_json_schema(missing, ref_template="#/components/schemas/{model}")
        for name, schema in extra.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        for schema in schemas.values():
            model = schema.get("properties", {}).get("model")
            if model is not None and model.get("type") == "string":
                model.pop("minLength", None)
                model["enum"] = sorted(runtime.model_names)
        if runtime.settings.api_key:
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},  # as Anthropic's clients send it
            }
            document["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in ops_api.PUBLIC_PATHS:
                for operation in document["paths"].get(path, {}).values():
                    operation["security"] = []
        api.openapi_schema = document
        return document

    api.openapi = openapi  # type: ignore[method-assign]
