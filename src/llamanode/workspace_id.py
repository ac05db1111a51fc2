"""The workspace-id rule, shared by the pool and the HTTP server: an id is safe as a URL path segment,
a header value and (slugged) a file name."""

from __future__ import annotations

import re

from .errors import InvalidInputError

__all__ = ["WORKSPACE_ID_PATTERN", "check_workspace_id", "is_workspace_id"]

WORKSPACE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_WORKSPACE_ID = re.compile(WORKSPACE_ID_PATTERN)


def is_workspace_id(value: object) -> bool:
    return isinstance(value, str) and _WORKSPACE_ID.fullmatch(value) is not None


def check_workspace_id(value: object) -> str:
    """value, if it is a workspace id; InvalidInputError otherwise."""
    if not is_workspace_id(value):
        raise InvalidInputError(f"a workspace id must match {WORKSPACE_ID_PATTERN}, got {value!r:.80}")
    assert isinstance(value, str)
    return value
