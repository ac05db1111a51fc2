"""HTTP errors: one ApiError, ONE table from typed llamanode errors to status, and per-API error shapes.

Classification walks the exception's class hierarchy (most specific class first); message text is
never inspected. An error's wire shape depends on the API the path belongs to (OpenAI's so far).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException

from ..chat import ChatTemplateError
from ..errors import (
    ConfigError,
    ContextOverflowError,
    GrammarError,
    InvalidInputError,
    LlamaNodeError,
    ManifestMismatchError,
    MemoryBudgetError,
    SessionBusyError,
    SessionClosedError,
    SessionFatalError,
    SessionUnavailableError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
    UnsupportedFeatureError,
)
from .schemas import WORKSPACE_HEADER

__all__ = [
    "ERROR_TABLE",
    "ApiError",
    "ErrorShape",
    "anthropic_error",
    "from_exception",
    "from_validation",
    "openai_error",
    "shape_for",
    "shutting_down",
]


class ApiError(HTTPException):
    """An error response: status, error type and code, extra headers and detail fields.

    A Starlette HTTPException, so FastAPI lets it through its own body handling unchanged.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=dict(headers or {}))
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r})"


# exception class -> (HTTP status, error type, code). Looked up along the MRO.
ERROR_TABLE: dict[type[BaseException], tuple[int, str, str]] = {
    ContextOverflowError: (400, "invalid_request_error", "context_length_exceeded"),
    ChatTemplateError: (400, "invalid_request_error", "invalid_messages"),
    GrammarError: (400, "invalid_request_error", "invalid_grammar"),
    ConfigError: (400, "invalid_request_error", "invalid_value"),
    InvalidInputError: (400, "invalid_request_error", "invalid_input"),
    UnsupportedFeatureError: (400, "invalid_request_error", "unsupported_feature"),
    ManifestMismatchError: (409, "conflict_error", "manifest_mismatch"),
    SnapshotMismatchError: (409, "conflict_error", "snapshot_mismatch"),
    MemoryBudgetError: (503, "server_error", "memory_budget_full"),
    SessionBusyError: (409, "conflict_error", "workspace_busy"),
    SessionClosedError: (410, "invalid_request_error", "session_closed"),
    SessionUnavailableError: (503, "server_error", "unavailable"),
    SessionFatalError: (500, "server_error", "session_fatal"),
    SnapshotCorruptError: (500, "server_error", "snapshot_corrupt"),
    SnapshotError: (500, "server_error", "snapshot_error"),
    LlamaNodeError: (500, "server_error", "internal_error"),
}


def from_exception(exc: BaseException, param: str | None = None) -> ApiError:
    """The ApiError for a typed llamanode error (500 for anything not in the table)."""
    if isinstance(exc, ApiError):
        return exc
    for cls in type(exc).__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            status, type_, code = row
            break
    else:
        status, type_, code = 500, "server_error", "internal_error"
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, ContextOverflowError):
        details = {
            "stage": exc.stage,
            "prompt_tokens": exc.resident_tokens
            if exc.stage == "decode"
            else exc.resident_tokens + exc.additional_tokens,
            "requested_tokens": exc.resident_tokens + exc.additional_tokens,
            "num_ctx": exc.num_ctx,
        }
    elif isinstance(exc, ManifestMismatchError | SnapshotMismatchError):
        details = {"field": exc.field}
    if status == 503:
        headers["Retry-After"] = "5"
    message = str(exc) if isinstance(exc, LlamaNodeError) else "internal server error"
    return ApiError(status, message, type_, code, param, headers, details)


def shutting_down() -> ApiError:
    return ApiError(
        503,
        "the server is shutting down; retry later",
        "server_error",
        "server_shutting_down",
        headers={"Retry-After": "5"},
    )


# Validation failures on these parameters get a more specific code than invalid_value.
_PARAM_CODES = {"id": "invalid_workspace", WORKSPACE_HEADER.lower(): "invalid_workspace"}
_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dict_type", "dataclass_type"}


def from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 for the first problem FastAPI/pydantic found in a request (never FastAPI's 422)."""
    first = errors[0]
    where, loc = _split_loc(first.get("loc", ()))
    kind = str(first.get("type", ""))
    name = ".".join(str(part) for part in loc)
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error") or first.get("msg")
        return ApiError(400, f"request body is not valid JSON: {reason}", code="invalid_json")
    if where == "body" and not loc and kind == "missing":
        return ApiError(400, "request body is empty; expected a JSON object", code="invalid_json")
    if where == "body" and not loc and kind in _NOT_AN_OBJECT:
        return ApiError(400, "request body must be a JSON object", code="invalid_json")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {name!r}", param=name, code="unknown_field")
    code = _PARAM_CODES.get(name.lower(), "invalid_value") if where in ("path", "header") else "invalid_value"
    prefix = f"{name}: " if name else ""
    return ApiError(400, f"{prefix}{first.get('msg', 'invalid value')}", param=name or None, code=code)


def _split_loc(loc: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """('body', 'messages', 0) -> ('body', ('messages', 0))."""
    if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
        return str(loc[0]), tuple(loc[1:])
    return "", tuple(loc)


ErrorShape = Callable[[ApiError], dict[str, Any]]


def openai_error(error: ApiError) -> dict[str, Any]:
    """OpenAI's error object: {"error": {message, type, param, code, ...details}}."""
    body: dict[str, Any] = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    body.update(error.details)
    return {"error": body}


# HTTP status -> Anthropic's error type (other 4xx: invalid_request_error, other 5xx: api_error).
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error(error: ApiError) -> dict[str, Any]:
    """Anthropic's error object: {"type": "error", "error": {"type", "message"}}, the type by status."""
    kind = _ANTHROPIC_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


# Path prefix -> that API's error shape; the first match wins, OpenAI's shape otherwise.
_SHAPES: tuple[tuple[str, ErrorShape], ...] = (("/v1/messages", anthropic_error),)


def shape_for(path: str) -> ErrorShape:
    for prefix, shape in _SHAPES:
        if path.startswith(prefix):
            return shape
    return openai_error
