"""Checks and choices every generating API makes before it queues: the model name, the prompt size,
the decode config (its grammar compiled against the vocabulary), and the workspace to run in.

They run on the event loop, and hop to a worker thread only for what blocks: compiling a grammar,
tokenizing a prompt to find its workspace, forking a workspace for a new session (compute executor).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..config import DecodeConfig
from ..errors import LlamaNodeError, SessionClosedError
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
    "fork_new_session",
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
    token prefix with full_text, else a new one. A named workspace the pool does not know starts as a fork
    of the workspace sharing the most with full_text (see fork_new_session)."""
    named = _named(header, key)
    if named is not None:
        workspace, named_by = named
        call.log["routed_by"] = named_by
        if rt.settings.fork_min_tokens > 0 and not rt.pool.has_workspace(workspace):
            await fork_new_session(rt, call, workspace, named_by, full_text)
        return workspace
    found, how = await run_in_threadpool(rt.router.find, full_text)
    if found is not None:
        call.log["routed_by"] = how
        return found
    call.log["routed_by"] = "new"
    return "auto-" + uuid.uuid4().hex[:16]


def _named(header: str | None, key: SessionKey | None) -> tuple[str, str] | None:
    """(workspace, what named it) when the client names its session: the header first, then its key."""
    if header is not None:
        return header, "header"
    if key is not None:
        return key.workspace(), key.source
    return None


async def fork_new_session(rt: Runtime, call: Call, workspace: str, named_by: str, full_text: str) -> None:
    """Start the new workspace as a fork of the live or stored one whose resident tokens share the longest
    prefix with full_text (at least --fork-min-tokens). Finding a candidate needs no compute slot; the fork
    runs on the compute executor under the workspace's admission, so a second request with the same key
    waits, then finds the fork. A failed fork is logged and counted, and the request starts cold."""
    min_tokens = rt.settings.fork_min_tokens
    if len(full_text.encode("utf-8")) + 1 < min_tokens:
        return  # a token is at least one byte (BOS aside): this prompt cannot share enough
    started = time.perf_counter()

    def candidate() -> tuple[list[int], str | None]:
        tokens = rt.pool.tokenize(full_text)
        return tokens, rt.pool.longest_prefix(tokens, min_tokens)[0]

    tokens, found = await run_in_threadpool(candidate)
    if found is None:
        return
    call.log["workspace"] = workspace
    try:
        origin = await rt.engine.run(call, workspace, lambda: rt.pool.fork_nearest(workspace, tokens, min_tokens))
    except SessionClosedError:
        raise
    except LlamaNodeError as exc:
        call.log["fork_error"] = f"{type(exc).__name__}: {exc}"
        rt.metrics.route_forks.labels(named_by=named_by, outcome="failed").inc()
        return
    if origin is not None:
        call.log.update(
            routed_by="fork",
            named_by=named_by,
            fork_source=origin.source,
            fork_shared_tokens=origin.shared_tokens,
            fork_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        rt.metrics.route_forks.labels(named_by=named_by, outcome="forked").inc()
