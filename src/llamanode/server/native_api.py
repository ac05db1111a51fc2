"""Native session routes under /v1/llamanode/sessions: the session contract over HTTP.

create/list/get/delete sessions, prefix, suffix, decode (JSON or SSE), context report, fork
and snapshot. Each call leases the workspace for its own duration only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..config import DecodeConfig
from ..kvsession import KVSession
from ..session import PrefillProgress, PrefixStatus, PrewarmReport, StreamChunk, SuffixStatus
from .call import Cancellation
from .engine import Plan
from .errors import ApiError, openai_error
from .prepare import check_grammar
from .responses import ContextOut, DecodeEvent, DecodeResult, SessionDeleted, SessionInfo, SessionList
from .runtime import Runtime
from .schemas import (
    WORKSPACE_HEADER,
    WORKSPACE_ID_PATTERN,
    DecodeRequest,
    ForkRequest,
    PrefixRequest,
    SessionCreateRequest,
    SuffixRequest,
)
from .streaming import collect, data_event, sse_response, stream_generation
from .web import ERROR_RESPONSES, CallDep, JsonRoute, RuntimeDep, event_stream, json_response

__all__ = ["BASE", "Sessions", "explain_not_found", "router"]

BASE = "/v1/llamanode/sessions"
_WORKSPACE_RE = re.compile(WORKSPACE_ID_PATTERN)

router = APIRouter(prefix=BASE, route_class=JsonRoute, tags=["Sessions"])
SessionId = Annotated[str, Path(pattern=WORKSPACE_ID_PATTERN, description="Session (workspace) id")]


class Sessions:
    """Sessions created here that hold nothing yet (the pool only knows workspaces with state)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.declared: set[str] = set()  # touched on the event loop only

    async def find(self, workspace: str) -> SessionInfo | None:
        for info in await run_in_threadpool(self.rt.pool.workspaces):
            if info.id == workspace:
                return SessionInfo.model_validate(info)
        if workspace in self.declared:
            return SessionInfo(id=workspace, live=False, resident_tokens=0, kv_bytes=0, snapshot_bytes=0)
        return None

    async def info(self, workspace: str) -> SessionInfo:
        found = await self.find(workspace)
        if found is None:
            raise ApiError(404, f"no session {workspace!r}; create it with POST {BASE}", code="session_not_found")
        return found

    async def refuse_existing(self, workspace: str) -> None:
        if await self.find(workspace) is not None:
            raise ApiError(409, f"session {workspace!r} already exists", type="conflict_error", code="session_exists")


def _sessions(request: Request) -> Sessions:
    sessions = request.app.state.sessions
    assert isinstance(sessions, Sessions)
    return sessions


def explain_not_found(path: str) -> ApiError | None:
    """A path under BASE that matched no route because its session id is malformed (say, holds '/')."""
    if not path.startswith(BASE + "/"):
        return None
    segment = path[len(BASE) + 1 :].split("/", 1)[0]
    if _WORKSPACE_RE.match(segment):
        return None
    return ApiError(400, f"session id must match {WORKSPACE_ID_PATTERN}", code="invalid_workspace", param="id")


def _ok(model: Any, status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model}, **ERROR_RESPONSES}


@router.get("", summary="List sessions (workspaces)", responses=_ok(SessionList))
async def list_sessions(rt: RuntimeDep, request: Request) -> Response:
    sessions = _sessions(request)
    data = [SessionInfo.model_validate(w) for w in await run_in_threadpool(rt.pool.workspaces)]
    known = {w.id for w in data}
    data += [await sessions.info(w) for w in sorted(sessions.declared - known)]
    return json_response(SessionList(data=data))


@router.post("", summary="Create a session", status_code=201, responses=_ok(SessionInfo, 201))
async def create_session(body: SessionCreateRequest, call: CallDep, request: Request) -> Response:
    sessions = _sessions(request)
    workspace = body.id or "s-" + uuid.uuid4().hex[:16]
    await sessions.refuse_existing(workspace)
    sessions.declared.add(workspace)
    call.log["workspace"] = workspace
    return json_response(await sessions.info(workspace), 201)


@router.get("/{id}", summary="Describe a session", responses=_ok(SessionInfo))
async def get_session(id: SessionId, request: Request) -> Response:
    return json_response(await _sessions(request).info(id))


@router.delete("/{id}", summary="Drop a session and its snapshot", responses=_ok(SessionDeleted))
async def delete_session(id: SessionId, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    sessions = _sessions(request)
    await sessions.info(id)
    sessions.declared.discard(id)
    rt.router.forget(id)
    if any(w.id == id for w in await run_in_threadpool(rt.pool.workspaces)):
        await rt.engine.run(call, id, lambda: rt.pool.drop(id))
    call.log["workspace"] = id
    return json_response(SessionDeleted(id=id))


@router.post(
    "/{id}/prefix",
    summary="ensure_prefix: keep the longest resident prefix (wait=false: prewarm it in the background)",
    responses={**_ok(PrefixStatus), 202: {"model": PrewarmReport}},
)
async def prefix(
    id: SessionId,
    body: PrefixRequest,
    rt: RuntimeDep,
    call: CallDep,
    request: Request,
    wait: Annotated[bool, Query(description="false: start prefilling and answer 202 at once")] = True,
) -> Response:
    await _sessions(request).info(id)
    segments = tuple((s.name, s.text) for s in body.segments)
    if not wait:  # the next prefix call joins the prewarm where it stands (KVSession.prewarm)
        handle = await run_in_threadpool(rt.pool.prewarm, id, segments)
        call.log.update(workspace=id, prewarm=True)
        return json_response(handle.report(), 202)

    def run(session: KVSession) -> PrefixStatus:
        return session.ensure_prefix(session.prefix(segments), on_progress=_stop_when(call.cancel))

    status = await rt.engine.with_session(call, id, run)
    rt.engine.record_prefix(call, status)
    return json_response(status)


@router.post("/{id}/suffix", summary="prefill_suffix: append volatile text", responses=_ok(SuffixStatus))
async def suffix(id: SessionId, body: SuffixRequest, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    await _sessions(request).info(id)

    def run(session: KVSession) -> SuffixStatus:
        return session.prefill_suffix(session.suffix(body.text), on_progress=_stop_when(call.cancel))

    status = await rt.engine.with_session(call, id, run)
    rt.engine.record_suffix(call, status)
    return json_response(status)


@router.post(
    "/{id}/decode",
    summary="decode: generate (JSON or server-sent events)",
    responses={200: {"model": DecodeResult, "content": event_stream(DecodeEvent)}, **ERROR_RESPONSES},
)
async def decode(id: SessionId, body: DecodeRequest, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    values = body.model_dump(exclude={"stream"})
    values["stop"] = tuple(values["stop"])
    config = DecodeConfig.from_mapping(values)
    await check_grammar(rt, config)
    await _sessions(request).info(id)
    generation = rt.engine.generation(call, Plan(id, None, None, config))
    if body.stream:
        return sse_response(stream_generation(generation, _DecodeEncoder()), {WORKSPACE_HEADER: id})
    finish = await collect(generation)
    return json_response(DecodeResult(text=generation.text, finish_reason=finish, report=generation.report))


@router.get("/{id}/context", summary="explain_context: what is resident and why", responses=_ok(ContextOut))
async def context(id: SessionId, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    await _sessions(request).info(id)
    report = await rt.engine.with_session(call, id, lambda session: session.explain_context())
    return json_response(ContextOut.model_validate(report))


@router.post("/{id}/fork", summary="Fork a session into a new one", status_code=201, responses=_ok(SessionInfo, 201))
async def fork(id: SessionId, body: ForkRequest, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    sessions = _sessions(request)
    await sessions.info(id)
    await sessions.refuse_existing(body.dst)
    await rt.engine.run(call, id, lambda: rt.pool.fork(id, body.dst))
    call.log["workspace"] = id
    return json_response(await sessions.info(body.dst), 201)


@router.post("/{id}/snapshot", summary="Write the session's snapshot to disk", responses=_ok(SessionInfo))
async def snapshot(id: SessionId, rt: RuntimeDep, call: CallDep, request: Request) -> Response:
    sessions = _sessions(request)
    await sessions.info(id)
    await rt.engine.run(call, id, lambda: rt.pool.checkpoint(id))
    call.log["workspace"] = id
    return json_response(await sessions.info(id))


def _stop_when(cancel: Cancellation) -> Callable[[PrefillProgress], None]:
    """A prefill progress callback that abandons the prefill (after a chunk) once the request is cancelled."""

    def check(progress: PrefillProgress) -> None:
        if progress.done_tokens < progress.total_tokens:
            cancel.check()

    return check


class _DecodeEncoder:
    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        fields: dict[str, Any] = {"text": chunk.text, "token_ids": list(chunk.token_ids)}
        if chunk.finish_reason is not None:
            fields.update(finish_reason=chunk.finish_reason, report=chunk.report)
        return [data_event(DecodeEvent(**fields).model_dump_json(exclude_unset=True))]

    def done(self) -> list[bytes]:
        return [data_event("[DONE]")]

    def error(self, error: ApiError) -> bytes:
        return data_event(pydantic_core.to_json(openai_error(error)))
