"""Native session routes under /v1/llamanode: the session contract over HTTP.

create/list/get/delete sessions, prefix, suffix, decode (JSON or SSE), context report, fork
and snapshot. Each call leases the workspace for its own duration only.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..config import DecodeConfig
from .engine import Job
from .errors import ApiError, from_exception
from .http import ClientGone, JsonResponse, Request, Response, StreamResponse, parse_body, sse_event
from .schemas import WORKSPACE_HEADER, DecodeRequest, ForkRequest, PrefixRequest, SessionCreateRequest, SuffixRequest

if TYPE_CHECKING:
    from .app import App

__all__ = ["NativeRoutes", "to_json"]


def to_json(value: Any) -> Any:
    """Dataclasses (reports, infos) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


class NativeRoutes:
    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._declared: set[str] = set()  # created here, nothing resident yet (the pool forgets empty ones)

    def _find(self, workspace: str) -> dict[str, Any] | None:
        for info in self.app.pool.workspaces():
            if info.id == workspace:
                return dict(to_json(info))
        with self._lock:
            declared = workspace in self._declared
        if declared:
            return {"id": workspace, "live": False, "resident_tokens": 0, "kv_bytes": 0, "snapshot_bytes": 0}
        return None

    def _info(self, workspace: str) -> dict[str, Any]:
        found = self._find(workspace)
        if found is None:
            raise ApiError(
                404, f"no session {workspace!r}; create it with POST /v1/llamanode/sessions", code="session_not_found"
            )
        return found

    def _refuse_existing(self, workspace: str) -> None:
        if self._find(workspace) is not None:
            raise ApiError(409, f"session {workspace!r} already exists", type="conflict_error", code="session_exists")

    def list_sessions(self, request: Request) -> Response:
        data = [to_json(w) for w in self.app.pool.workspaces()]
        known = {w["id"] for w in data}
        with self._lock:
            extra = sorted(self._declared - known)
        data += [self._info(w) for w in extra]
        return JsonResponse({"object": "list", "data": data})

    def create_session(self, request: Request) -> Response:
        body = parse_body(request, SessionCreateRequest)
        workspace = body.id or "s-" + uuid.uuid4().hex[:16]
        self._refuse_existing(workspace)
        with self._lock:
            self._declared.add(workspace)
        request.log["workspace"] = workspace
        return JsonResponse(self._info(workspace), status=201)

    def get_session(self, request: Request) -> Response:
        return JsonResponse(self._info(request.params["id"]))

    def delete_session(self, request: Request) -> Response:
        workspace = request.params["id"]
        self._info(workspace)
        with self._lock:
            self._declared.discard(workspace)
        self.app.router.forget(workspace)
        if any(w.id == workspace for w in self.app.pool.workspaces()):
            with self.app.admission.slot(workspace):
                self.app.pool.drop(workspace)
        request.log["workspace"] = workspace
        return JsonResponse({"id": workspace, "object": "session", "deleted": True})

    def prefix(self, request: Request) -> Response:
        workspace = request.params["id"]
        body = parse_body(request, PrefixRequest)
        self._info(workspace)
        stack, session = self.app.engine.lease(request, workspace)
        with stack:
            status = session.ensure_prefix(session.prefix(tuple((s.name, s.text) for s in body.segments)))
        self.app.engine.record_prefix(request, status)
        request.log["workspace"] = workspace
        return JsonResponse(to_json(status))

    def suffix(self, request: Request) -> Response:
        workspace = request.params["id"]
        body = parse_body(request, SuffixRequest)
        self._info(workspace)
        stack, session = self.app.engine.lease(request, workspace)
        with stack:
            status = session.prefill_suffix(session.suffix(body.text))
        self.app.metrics.inc("llamanode_prompt_tokens_prefilled_total", status.suffix_tokens)
        request.log["workspace"] = workspace
        return JsonResponse(to_json(status))

    def decode(self, request: Request) -> Response:
        workspace = request.params["id"]
        body = parse_body(request, DecodeRequest)
        values = body.model_dump(exclude={"stream"})
        values["stop"] = tuple(values["stop"])
        config = DecodeConfig.from_mapping(values)
        self.app.model_probe.check_grammar(config)
        self._info(workspace)
        job = self.app.engine.stream_only(request, workspace, config)
        if body.stream:
            return StreamResponse(_decode_events(job), headers={WORKSPACE_HEADER: workspace}, after=job.close)
        parts: list[str] = []
        final: dict[str, Any] = {}
        try:
            for chunk in job:
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    if chunk.error is not None:
                        raise from_exception(chunk.error)
                    final = {"finish_reason": chunk.finish_reason, "report": to_json(chunk.report)}
        finally:
            job.close()
        return JsonResponse({"text": "".join(parts), **final})

    def context(self, request: Request) -> Response:
        workspace = request.params["id"]
        self._info(workspace)
        stack, session = self.app.engine.lease(request, workspace)
        with stack:
            report = session.explain_context()
        payload = to_json(report)
        if report.manifest is not None:
            payload["manifest"]["digest"] = report.manifest.digest
        return JsonResponse(payload)

    def fork(self, request: Request) -> Response:
        src = request.params["id"]
        body = parse_body(request, ForkRequest)
        self._info(src)
        self._refuse_existing(body.dst)
        with self.app.admission.slot(src):
            self.app.pool.fork(src, body.dst)
        request.log["workspace"] = src
        return JsonResponse(self._info(body.dst), status=201)

    def snapshot(self, request: Request) -> Response:
        workspace = request.params["id"]
        self._info(workspace)
        with self.app.admission.slot(workspace):
            self.app.pool.checkpoint(workspace)
        request.log["workspace"] = workspace
        return JsonResponse(self._info(workspace))


def _decode_events(job: Job) -> Iterator[bytes]:
    try:
        for chunk in job:
            if chunk.error is not None:
                yield sse_event(from_exception(chunk.error).body())
                return
            event: dict[str, Any] = {"text": chunk.text, "token_ids": list(chunk.token_ids)}
            if chunk.finish_reason is not None:
                event.update(finish_reason=chunk.finish_reason, report=to_json(chunk.report))
            yield sse_event(event)
        yield sse_event("[DONE]")
    except ClientGone:
        return
