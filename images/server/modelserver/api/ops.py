"""Operations routes: /health (readiness) and /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed up at its largest batch; 503 before, and
    503 for good once a sticky device error broke the engine (the liveness probe then
    restarts the pod)."""
    svc = request.app.state.service
    if svc.ready:
        return JSONResponse({"status": "ok", "model": svc.served_name})
    if svc.broken:
        return JSONResponse({"status": "broken", "error": svc.broken}, status_code=503)
    body = {"status": "failed" if svc.load_error else "loading"}
    if svc.load_error:
        body["error"] = svc.load_error
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
