"""Operations routes: /health (no API key needed) and /metrics (Prometheus); FastAPI serves /openapi.json."""

from __future__ import annotations

from fastapi import APIRouter, Header
from starlette.responses import Response

from .. import __version__
from .responses import Health
from .web import ERROR_RESPONSES, JsonRoute, RuntimeDep, json_response

__all__ = ["PUBLIC_PATHS", "router"]

PUBLIC_PATHS = frozenset({"/health"})  # answered without an API key

router = APIRouter(route_class=JsonRoute, tags=["Operations"])


@router.get("/health", summary="Liveness and model summary (no API key needed)", responses={200: {"model": Health}})
async def health(rt: RuntimeDep) -> Response:
    stats = rt.admission.stats()
    return json_response(
        Health(status="ok", model=rt.model_id, queued=stats.queued, active=stats.active, version=__version__)
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **ERROR_RESPONSES},
)
async def metrics(rt: RuntimeDep, accept: str | None = Header(default=None, include_in_schema=False)) -> Response:
    body, content_type = rt.metrics.render(accept)
    return Response(body, media_type=content_type)
