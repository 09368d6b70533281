"""The gateway's one upstream engine (vLLM, TGI, or `modelserver serve`) on loopback:
forwarding a request as it came (less the client's key and hop-by-hop headers), relaying
the answer chunk by chunk, and turning transport failures into typed errors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import APIError, BadGatewayError, RequestTimeoutError, UnavailableError
from .metrics import GatewayMetrics

log = logging.getLogger("modelserver.gateway")

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# Not forwarded to the engine: the client's API key (the engine has none, and must never
# see or log it), what httpx sets itself, and a client's own X-Forwarded-For (replaced by
# the address the access middleware resolved). accept-encoding: the hop is loopback, and
# an uncompressed stream is relayed as it is produced.
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "authorization", "host", "content-length", "x-forwarded-for", "x-forwarded-proto",
    "accept-encoding",
}
# Not relayed back: the answer is re-framed (chunked) and uvicorn writes its own.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "date", "server"}
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0  # /health and /metrics: the kubelet and scrapers wait no longer


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    """Headers a Connection header names are hop-by-hop too (RFC 9110 7.6.1)."""
    listed: set[str] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            listed |= {t.strip().lower() for t in v.decode("latin-1").split(",")}
    return listed


def request_headers(raw: list[tuple[bytes, bytes]], client: str | None,
                    scheme: str) -> list[tuple[bytes, bytes]]:
    """The client's headers as the engine gets them."""
    drop = DROPPED_REQUEST_HEADERS | _connection_listed(raw)
    out = [(k, v) for k, v in raw if k.decode("latin-1").lower() not in drop]
    if client:
        out.append((b"x-forwarded-for", client.encode("latin-1")))
    out += [(b"x-forwarded-proto", scheme.encode()), (b"accept-encoding", b"identity")]
    return out


def response_headers(resp: httpx.Response) -> list[tuple[bytes, bytes]]:
    raw = resp.headers.raw
    drop = DROPPED_RESPONSE_HEADERS | _connection_listed(raw)
    return [(k.lower(), v) for k, v in raw if k.decode("latin-1").lower() not in drop]


class RelayedResponse(StreamingResponse):
    """The engine's answer relayed as it arrives (SSE token by token). However it ends (all
    sent, the client gone, an error) the upstream connection is closed with it, so the
    engine stops generating for nobody, and `on_close` runs (the admission slot)."""

    def __init__(self, upstream: httpx.Response, metrics: GatewayMetrics,
                 on_close: Callable[[], None]) -> None:
        super().__init__(self._relay(upstream, metrics), status_code=upstream.status_code)
        self.raw_headers = response_headers(upstream)
        self._upstream = upstream
        self._on_close = on_close

    @staticmethod
    async def _relay(upstream: httpx.Response, metrics: GatewayMetrics):
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            # headers are sent: the status cannot change; breaking the connection (no
            # final chunk) tells the client the answer is incomplete
            metrics.upstream_errors.labels(kind="stream").inc()
            log.warning("upstream broke off mid-answer: %s", type(exc).__name__)
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # shielded: on a client disconnect this runs inside a cancelled scope
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()
            self._on_close()


class Upstream:
    def __init__(self, base_url: str, timeout: float, metrics: GatewayMetrics) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.metrics = metrics
        # trust_env=False: an HTTP(S)_PROXY in the pod's environment must not reroute
        # the loopback hop. No pool limit: the gateway's admission bounds the requests.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            trust_env=False, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, method: str, raw_path: str, query: str,
                   headers: list[tuple[bytes, bytes]], body: bytes) -> httpx.Response:
        """The engine's response, headers read and body not yet (stream=True); a typed
        APIError when the engine cannot be reached or does not answer in time."""
        url = self.base_url + raw_path + (f"?{query}" if query else "")
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            return await self._client.send(request, stream=True)
        except Exception as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: Exception) -> APIError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            kind, err = "connect", UnavailableError(
                f"upstream engine at {self.base_url} is not reachable (not started yet, "
                "or stopped)")
        elif isinstance(exc, httpx.TimeoutException):
            kind, err = "timeout", RequestTimeoutError(
                f"upstream engine did not answer within --request-timeout {self.timeout:g}s")
        elif isinstance(exc, httpx.HTTPError | OSError):
            kind, err = "protocol", BadGatewayError(
                f"upstream engine broke off the request ({type(exc).__name__})")
        else:
            raise exc
        self.metrics.upstream_errors.labels(kind=kind).inc()
        log.warning("upstream %s failed: %s", self.base_url, type(exc).__name__)
        return err

    async def probe(self, path: str) -> httpx.Response | None:
        """GET `path` with a short timeout: the response (body read), or None when the
        engine does not answer."""
        try:
            return await self._client.get(self.base_url + path, timeout=PROBE_TIMEOUT_S)
        except (httpx.HTTPError, OSError):
            return None
