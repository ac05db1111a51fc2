"""The OpenAPI 3.1 document, built from the route table and the request models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .schemas import (
    WORKSPACE_HEADER,
    WORKSPACE_ID_PATTERN,
    ChatCompletionRequest,
    CompletionRequest,
    DecodeRequest,
    EmbeddingRequest,
    ErrorResponse,
    ForkRequest,
    PrefixRequest,
    SessionCreateRequest,
    SuffixRequest,
)

if TYPE_CHECKING:
    from .app import App

__all__ = ["build_openapi"]

_REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/chat/completions"): ChatCompletionRequest,
    ("POST", "/v1/completions"): CompletionRequest,
    ("POST", "/v1/embeddings"): EmbeddingRequest,
    ("POST", "/v1/llamanode/sessions"): SessionCreateRequest,
    ("POST", "/v1/llamanode/sessions/{id}/prefix"): PrefixRequest,
    ("POST", "/v1/llamanode/sessions/{id}/suffix"): SuffixRequest,
    ("POST", "/v1/llamanode/sessions/{id}/decode"): DecodeRequest,
    ("POST", "/v1/llamanode/sessions/{id}/fork"): ForkRequest,
}
_STREAMING = {"/v1/chat/completions", "/v1/completions", "/v1/llamanode/sessions/{id}/decode"}
_CREATED = {("POST", "/v1/llamanode/sessions"), ("POST", "/v1/llamanode/sessions/{id}/fork")}
_ERRORS = {
    "400": "Invalid request (malformed JSON, unknown field, bad value, bad grammar, context overflow)",
    "401": "Missing or wrong API key",
    "403": "Host or CORS origin not allowed",
    "404": "Unknown route, model or session",
    "408": "Timed out reading the request body",
    "405": "Method not allowed on this route",
    "409": "Conflict (session exists, manifest or snapshot mismatch, workspace busy)",
    "410": "Session closed",
    "411": "Content-Length required",
    "413": "Body or prompt too large",
    "429": "Queue full; retry after Retry-After seconds",
    "500": "Internal error",
    "503": "Unavailable or queue timeout; retry after Retry-After seconds",
}


def build_openapi(app: App) -> dict[str, Any]:
    classes: list[type[BaseModel]] = sorted({*_REQUEST_BODIES.values(), ErrorResponse}, key=lambda m: m.__name__)
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [(m, "validation") for m in classes]
    refs, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    served = sorted(app.model_names)
    for schema in schemas.values():
        model = schema.get("properties", {}).get("model")
        if model is not None:  # the only names accepted: say so, so clients (and fuzzers) can know
            model.pop("minLength", None)
            model["enum"] = served
    paths: dict[str, dict[str, Any]] = {}
    for route in app.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            app, route.method, route.path, route.summary, route.public, refs
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "llamanode",
            "version": __version__,
            "description": (
                "OpenAI-compatible API plus native session routes over persistent, workspace-scoped KV sessions. "
                f"Serving {app.model_id}. Route a conversation to a workspace with the {WORKSPACE_HEADER} header "
                "(or the `user` field); without either, the workspace sharing the longest prompt prefix is used."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if app.settings.api_key:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _operation(
    app: App, method: str, path: str, summary: str, public: bool, refs: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": _operation_id(method, path)}
    params: list[dict[str, Any]] = []
    if "{id}" in path:
        params.append(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": WORKSPACE_ID_PATTERN},
            }
        )
    if "{model}" in path:
        params.append({"name": "model", "in": "path", "required": True, "schema": {"type": "string"}})
    if path in ("/v1/chat/completions", "/v1/completions"):
        params.append(
            {
                "name": WORKSPACE_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": WORKSPACE_ID_PATTERN},
                "description": "Workspace to run in (created if new).",
            }
        )
    if params:
        op["parameters"] = params
    body_model = _REQUEST_BODIES.get((method, path))
    if body_model is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(body_model, "validation")]}},
        }
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if path == "/metrics":
        content = {"text/plain": {"schema": {"type": "string"}}}
    elif path in _STREAMING:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    ok = "201" if (method, path) in _CREATED else "200"
    error_ref = {"application/json": {"schema": refs[(ErrorResponse, "validation")]}}
    op["responses"] = {ok: {"description": "Success", "content": content}} | {
        code: {"description": text, "content": error_ref} for code, text in _ERRORS.items()
    }
    if public:
        op["security"] = []
    return op


def _operation_id(method: str, path: str) -> str:
    words = [p.strip("{}") for p in path.split("/") if p and p != "v1"]
    return method.lower() + "_" + "_".join(w.replace(".", "_").replace("-", "_") for w in words)
