"""`modelserver gateway`: the ASGI app in front of an engine on loopback (vLLM, TGI). It
adds what `serve` has around its own engine (access control, answer cache, overflow,
admission, metrics) and proxies every other route to the engine unchanged."""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, errors
from .config import GatewaySettings
from .errors import OverloadedError, UnavailableError
from .metrics import GatewayMetrics
from .security import AccessMiddleware, KeyFile
from .upstream import RelayedResponse, Upstream, request_headers, response_headers

# OpenAI routes the overflow upstream can take (an OpenAI-compatible server), as the
# route under its base URL.
OVERFLOW_ROUTES = {"/v1/chat/completions": "chat/completions",
                   "/v1/completions": "completions"}
CACHED_ROUTE = "/v1/chat/completions"  # serve caches chat answers only, and so does this
# The `route` label of the request counter: known routes by name, anything else as
# "other", so that random paths cannot grow the metric without bound.
KNOWN_ROUTES = frozenset({
    "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
    "/v1/embeddings", "/generate", "/generate_stream", "/info", "/tokenize", "/",
})
PROXIED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def deterministic(body: dict[str, Any]) -> bool:
    """serve's rule (cache.ResponseCache.cacheable: greedy or seeded), read from the request
    alone: the engine's default temperature is unknown here, so only an explicit one
    counts."""
    temperature = body.get("temperature")
    greedy = (isinstance(temperature, int | float) and temperature <= 0) or body.get("top_k") == 1
    return greedy or body.get("seed") is not None


def cache_request(body: dict[str, Any]) -> dict[str, Any]:
    """What identifies an answer, as serve keys it: the request less its delivery."""
    return {k: v for k, v in body.items()
            if k not in ("stream", "stream_options", "user") and v is not None}


class Admission:
    """The gateway's in-flight count against --max-concurrent-requests."""

    def __init__(self, limit: int, metrics: GatewayMetrics) -> None:
        self.limit, self.metrics, self.inflight = limit, metrics, 0

    def try_acquire(self) -> bool:
        if self.inflight >= self.limit:
            return False
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        return True

    def release(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)


class RequestMetrics:
    """Outermost middleware: every answer counted by route and status, the access
    middleware's 401/403/413 included."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        started = time.monotonic()

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route=route, status=str(message["status"])).inc()
                self.metrics.duration.labels(route=route).observe(time.monotonic() - started)
            await send(message)

        await self.app(scope, receive, counted)


def build_gateway_app(settings: GatewaySettings) -> ASGIApp:
    # httpx logs every upstream request at INFO: the access log already has each one
    logging.getLogger("httpx").setLevel(logging.WARNING)
    metrics = GatewayMetrics()
    upstream = Upstream(settings.upstream, settings.request_timeout, metrics)
    admission = Admission(settings.max_concurrent_requests, metrics)
    cache = overflow = None
    if settings.cache_redis_url:
        from .cache import ResponseCache

        cache = ResponseCache.from_settings(settings, metrics)
    if settings.overflow_url:
        from .overflow import Overflow

        overflow = Overflow.from_settings(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cache is not None:
            await cache.connect()
        try:
            yield
        finally:
            await upstream.close()
            if overflow is not None:
                await overflow.close()

    # no docs routes of its own: every path but /health and /metrics is the engine's
    app = FastAPI(title="modelserver gateway", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 only when the engine's /health answers 200: the kubelet probes this."""
        resp = await upstream.probe("/health")
        if resp is not None and resp.status_code == 200:
            return JSONResponse({"status": "ok", "upstream": "ready"})
        why = "not reachable" if resp is None else f"answered {resp.status_code}"
        return errors.error_response(
            "/health", UnavailableError(f"upstream engine is not ready (/health {why})"))

    @app.get("/metrics")
    async def metrics_route() -> Response:
        """The gateway's metrics, then the engine's as it wrote them (the engine is on
        loopback: the HPA and scrapers read its gauges here)."""
        text = metrics.render()
        resp = await upstream.probe("/metrics")
        if resp is not None and resp.status_code == 200:
            text += b"\n" + resp.content
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def overloaded(request: Request, body: dict[str, Any] | None,
                         retry_after: int) -> Response:
        """Full here or at the engine: to the overflow upstream when it takes this
        route, else 429 with Retry-After."""
        route = OVERFLOW_ROUTES.get(request.url.path)
        if overflow is not None and route is not None and body is not None:
            return await overflow.forward(request, route, body, bool(body.get("stream")))
        metrics.rejected.inc()
        raise OverloadedError(retry_after=retry_after)

    @app.api_route("/{path:path}", methods=PROXIED_METHODS)
    async def proxy(request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        body = _json_object(raw) if path in OVERFLOW_ROUTES else None
        key = None
        if cache is not None and path == CACHED_ROUTE and body is not None and \
                not body.get("stream") and deterministic(body):
            key = cache.key("chat.completion", str(body.get("model", "")), cache_request(body))
            hit = await cache.get(key)
            if hit is not None:
                return JSONResponse(hit)
        if not admission.try_acquire():
            return await overloaded(request, body, retry_after=1)
        relayed = False
        try:
            client = request.scope.get("client")
            headers = request_headers(request.headers.raw, client[0] if client else None,
                                      request.url.scheme)
            resp = await upstream.send(request.method, request.scope.get("raw_path", b"")
                                       .decode("latin-1") or path,
                                       request.url.query, headers, raw)
            if resp.status_code == 429:
                await resp.aclose()
                return await overloaded(request, body, _retry_after(resp))
            if key is None:
                relayed = True
                return RelayedResponse(resp, metrics, on_close=admission.release)
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            if resp.status_code == 200:
                answer = _json_object(content)
                if answer is not None:
                    await cache.put(key, answer)
            answered = Response(content, status_code=resp.status_code)
            answered.raw_headers = [*response_headers(resp),
                                    (b"content-length", str(len(content)).encode())]
            return answered
        finally:
            if not relayed:
                admission.release()

    keys = KeyFile(settings.api_keys_file) if settings.api_keys_file else None
    guarded = AccessMiddleware(app, keys, settings.allow_cidr, settings.max_body_bytes,
                               settings.trusted_proxy_cidr)
    return RequestMetrics(guarded, metrics)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _retry_after(resp: Any) -> int:
    try:
        return max(1, int(resp.headers.get("retry-after", "1")))
    except ValueError:
        return 1
