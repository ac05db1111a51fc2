"""Checks and choices every generating API makes before it queues: the model name, the prompt size,
the decode config (its grammar compiled against the vocabulary), and the workspace to run in.

They run on the event loop, and hop to a worker thread only for what blocks: compiling a grammar,
tokenizing a prompt to find its workspace.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..config import DecodeConfig
from ..grammar import schema_annotations
from ..tools import ToolPlan
from .call import Call
from .errors import ApiError
from .runtime import Runtime

__all__ = [
    "SessionKey",
    "check_grammar",
    "check_model",
    "check_prompt_size",
    "decode_config",
    "first_key",
    "note_annotations",
    "route_workspace",
    "unknown_model",
]

# Where a session key comes from -> the prefix of the workspace ids made from it (logged as routed_by).
KEY_SOURCES = {"prompt_cache_key": "cache", "metadata.user_id": "session", "user": "user"}


@dataclass(frozen=True)
class SessionKey:
    """A client's own name for its conversation (source: a KEY_SOURCES key), mapped to a workspace id."""

    source: str
    value: str

    def workspace(self) -> str:
        return f"{KEY_SOURCES[self.source]}-" + hashlib.sha256(self.value.encode("utf-8")).hexdigest()[:24]


def first_key(*keys: SessionKey | None) -> SessionKey | None:
    """The first key that is present; an API passes its keys in precedence order (README: routing)."""
    return next((k for k in keys if k is not None and k.value), None)


def note_annotations(call: Call, plan: ToolPlan | None, schema: Mapping[str, Any] | None = None) -> None:
    """Name in the request log the schema keywords the grammar treats as annotations (format values
    it does not enforce), for the tools that can be called and the answer's JSON schema."""
    notes = [*(plan.grammar.annotations if plan is not None and plan.grammar else ())]
    notes += [f"response_format: {note}" for note in (schema_annotations(schema) if schema is not None else ())]
    if notes:
        call.log["schema_annotations"] = notes


def check_model(rt: Runtime, name: str) -> None:
    if name not in rt.model_names:
        raise unknown_model(rt, name)


def unknown_model(rt: Runtime, name: str) -> ApiError:
    return ApiError(
        404,
        f"model {name!r} is not served here; this server serves {rt.model_id!r} (see /v1/models)",
        code="model_not_found",
        param="model",
    )


def check_prompt_size(rt: Runtime, size: int, param: str = "messages") -> None:
    limit = rt.settings.max_prompt_bytes
    if size > limit:
        raise ApiError(
            413, f"prompt is {size} bytes; this server accepts at most {limit}", code="prompt_too_large", param=param
        )


async def decode_config(rt: Runtime, values: Mapping[str, Any]) -> DecodeConfig:
    """DecodeConfig from the given values (None values are left at their defaults), its grammar or
    JSON schema compiled against the vocabulary (GrammarError if it fails)."""
    config = DecodeConfig.from_mapping({k: v for k, v in values.items() if v is not None or k == "max_tokens"})
    await check_grammar(rt, config)
    return config


async def check_grammar(rt: Runtime, config: DecodeConfig) -> None:
    if config.grammar is not None or config.json_schema is not None:
        await run_in_threadpool(rt.model_probe.check_grammar, config)


async def route_workspace(rt: Runtime, call: Call, header: str | None, key: SessionKey | None, full_text: str) -> str:
    """The header, else a stable id for the client's session key, else the workspace sharing the longest
    token prefix with full_text, else a new one."""
    if header is not None:
        call.log["routed_by"] = "header"
        return header
    if key is not None:
        call.log["routed_by"] = key.source
        return key.workspace()
    found, how = await run_in_threadpool(rt.router.find, full_text)
    if found is not None:
        call.log["routed_by"] = how
        return found
    call.log["routed_by"] = "new"
    return "auto-" + uuid.uuid4().hex[:16]
