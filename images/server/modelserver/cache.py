"""Response cache in Redis for repeated deterministic requests (greedy, or seeded).

The key is a hash of the served model and the normalized request; the value is the
finished result (text, tool calls, finish reason, usage), from which either response
form is rebuilt. Redis being down (or refusing the password) never fails a request: the
cache is skipped."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ListenerSettings
from .metrics import CacheMetrics

if TYPE_CHECKING:  # the gateway uses this module without loading torch
    from .engine.sampling import SamplingParams

log = logging.getLogger("modelserver.cache")


class ResponseCache:
    def __init__(self, url: str, ttl: int, metrics: CacheMetrics,
                 password: str | None = None) -> None:
        self.url, self.ttl, self.metrics = url, ttl, metrics
        self._password = password
        self._redis: Any = None

    @classmethod
    def from_settings(cls, settings: ListenerSettings, metrics: CacheMetrics) -> ResponseCache:
        """The cache `serve` and `gateway` both run, from their shared flags. The password
        comes from a file (a mounted Secret), never from the URL or an argument."""
        assert settings.cache_redis_url
        password = None
        if settings.cache_redis_password_file:
            lines = Path(settings.cache_redis_password_file).read_text().splitlines()
            password = lines[0].strip() if lines else ""
        return cls(settings.cache_redis_url, settings.cache_ttl, metrics, password)

    async def connect(self) -> None:
        import redis.asyncio as redis

        kw = {} if self._password is None else {"password": self._password}
        self._redis = redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2,
                                     **kw)

    @staticmethod
    def cacheable(params: SamplingParams) -> bool:
        return params.greedy or params.seed is not None

    @staticmethod
    def key(kind: str, model: str, request: dict[str, Any]) -> str:
        blob = json.dumps([kind, model, request], sort_keys=True, ensure_ascii=False)
        return "modelserver:resp:" + hashlib.sha256(blob.encode()).hexdigest()

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.get(key)
        except Exception as exc:
            log.warning("response cache unavailable (%s): skipping", type(exc).__name__)
            return None
        if raw is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        return json.loads(raw)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self._redis.set(key, json.dumps(value), ex=self.ttl)
        except Exception as exc:
            log.warning("response cache write failed (%s)", type(exc).__name__)
