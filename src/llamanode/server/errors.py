"""HTTP errors in OpenAI's shape. Typed llamanode errors map to a status through ONE table.

Classification walks the exception's class hierarchy (most specific class first); message
text is never inspected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["ERROR_TABLE", "ApiError", "from_exception"]


@dataclass
class ApiError(Exception):
    """An error response: status, OpenAI error object, extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        error.update(self.details)
        return {"error": error}


# exception class -> (HTTP status, OpenAI error type, code). Looked up along the MRO.
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


def register_error(cls: type[BaseException], status: int, type_: str, code: str) -> None:
    """Add a row (for error classes defined by other modules, such as the workspace pool)."""
    ERROR_TABLE[cls] = (status, type_, code)


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
