"""Overflow: when the local queue is full, forward the request to an upstream
OpenAI-compatible server instead of answering 429. If the upstream fails or is full
too, answer 429 — never hang (connect and read timeouts are bounded)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .config import ListenerSettings
from .errors import OverloadedError
from .metrics import OverflowMetrics
from .redact import redact

log = logging.getLogger("modelserver.overflow")


# What carries the user's text in a forwarded request: chat messages (a string, or parts
# with `text`), tool call arguments, and a completion's prompt. Roles, ids, names and
# sampling parameters are left alone.
REDACTED_KEYS = ("content", "text", "arguments", "prompt")


def redact_request(value: Any, key: str | None = None) -> Any:
    """The request with personal data masked (redact.redact) in the user's text."""
    if isinstance(value, dict):
        return {k: redact_request(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_request(v, key) for v in value]
    if isinstance(value, str) and key in REDACTED_KEYS:
        return redact(value)
    return value


class Overflow:
    def __init__(self, base_url: str, key_file: str | None, metrics: OverflowMetrics,
                 timeout: float, ca_file: str | None = None,
                 redact_requests: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_file = key_file
        self.metrics = metrics
        self.redact_requests = redact_requests
        # A private CA (another ModelDeployment's) replaces the system's, it is not added.
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=ca_file)
                                         if ca_file else True)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0),
                                         verify=verify)

    @classmethod
    def from_settings(cls, settings: ListenerSettings, metrics: OverflowMetrics) -> Overflow:
        """The overflow `serve` and `gateway` both run, from their shared flags."""
        assert settings.overflow_url
        return cls(settings.overflow_url, settings.overflow_api_key_file, metrics,
                   settings.overflow_timeout_seconds, ca_file=settings.overflow_ca_file,
                   redact_requests=settings.redact_overflow_requests)

    def _headers(self) -> dict[str, str]:
        if not self.key_file:
            return {}
        # read per request: the mounted Secret may rotate
        key = Path(self.key_file).read_text().strip().splitlines()[0].strip()
        return {"Authorization": f"Bearer {key}"}

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(self, request: Request, route: str, body: dict[str, Any],
                      stream: bool) -> JSONResponse | StreamingResponse:
        url = f"{self.base_url}/{route}"
        body = {k: v for k, v in body.items() if k != "model"}  # upstream picks its model
        if self.redact_requests:
            body = redact_request(body)
        try:
            req = self._client.build_request("POST", url, json=body, headers=self._headers())
            resp = await self._client.send(req, stream=True)
        except (httpx.HTTPError, OSError) as exc:
            log.warning("overflow upstream unreachable: %s", type(exc).__name__)
            self.metrics.overflowed.labels(result="failed").inc()
            self.metrics.rejected.inc()
            raise OverloadedError("local queue is full and the overflow upstream failed") from exc
        if resp.status_code != 200:
            await resp.aclose()
            log.warning("overflow upstream answered %d", resp.status_code)
            self.metrics.overflowed.labels(result="failed").inc()
            self.metrics.rejected.inc()
            raise OverloadedError("local queue is full and the overflow upstream failed")
        self.metrics.overflowed.labels(result="ok").inc()
        if not stream:
            try:
                data = await resp.aread()
            finally:
                await resp.aclose()
            return JSONResponse(content=httpx.Response(200, content=data).json(),
                                headers={"X-Modelserver-Overflow": "1"})

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream",
                                 headers={"X-Modelserver-Overflow": "1"})
