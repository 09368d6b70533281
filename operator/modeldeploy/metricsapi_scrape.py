"""Which pods the custom metrics API reads, and reading them: each ModelDeployment pod's
own /metrics on its serving port (HTTPS verified like a client would when TLS is on).

Only pods of ModelDeployments the operator watches are scraped, only for the gauges their
engine plan declares (render/engines). A scrape is cached briefly and shared by concurrent
asks, so one HPA sync (and the kubectl user next to it) costs each pod one request; a pod
that does not answer in time is left out of the answer, never reported as 0.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from modeldeploy.render import engines
from modeldeploy.spec import Spec, parse

log = logging.getLogger(__name__)

# Shorter than the HPA's 15 s sync, longer than the one sync's burst of requests.
CACHE_SECONDS = 5.0
# One slow pod must not hold the HPA's request (the API server gives up after ~30 s).
SCRAPE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Target:
    """One pod to read, with what its owner declares and how to reach it."""

    pod: str
    uid: str
    labels: dict[str, str]
    url: str                 # http(s)://POD_IP:PORT/metrics
    server_name: str         # the name its certificate carries (the Service's DNS name)
    spec: Spec = field(repr=False)

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(engines.plan(self.spec).metrics.values())


def spec_of(body: dict[str, Any]) -> Spec | None:
    meta = body["metadata"]
    try:
        return parse(meta["name"], meta["namespace"], meta.get("uid", ""),
                     body.get("spec") or {})
    except Exception:  # noqa: BLE001 - an invalid spec has no pods worth reading
        return None


def declared_metrics(specs: Iterable[Spec]) -> set[str]:
    """Every gauge name an autoscaling ModelDeployment's engine can be scaled on."""
    out: set[str] = set()
    for spec in specs:
        out |= set(engines.plan(spec).metrics.values())
    return out


def targets(spec: Spec, pods: Iterable[dict[str, Any]]) -> list[Target]:
    """The running pods of one ModelDeployment that have an address."""
    out = []
    for pod in pods:
        meta, st = pod["metadata"], pod.get("status") or {}
        ip = st.get("podIP")
        if not ip or st.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.append(Target(meta["name"], meta.get("uid", ""), dict(meta.get("labels") or {}),
                          f"{spec.scheme}://{host}:{spec.network.port}/metrics",
                          f"{spec.name}.{spec.namespace}.svc", spec))
    return out


CaLookup = Callable[[Spec], Awaitable[str | None]]


class Scraper:
    def __init__(self, ca_of: CaLookup, cache_seconds: float = CACHE_SECONDS,
                 timeout: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.ca_of = ca_of  # the CA that issued a ModelDeployment's serving certificate
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cache: dict[tuple[str, str], tuple[float, asyncio.Task[str | None]]] = {}
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    async def text(self, target: Target) -> str | None:
        """The pod's /metrics text, None when it could not be read."""
        key = (target.uid, target.url)
        now = time.monotonic()
        held = self._cache.get(key)
        if held is None or now - held[0] > self.cache_seconds:
            # Stale entries of pods that are gone are dropped as new ones come in.
            self._cache = {k: v for k, v in self._cache.items()
                           if now - v[0] <= self.cache_seconds}
            held = (now, asyncio.ensure_future(self._fetch(target)))
            self._cache[key] = held
        return await asyncio.shield(held[1])

    async def _client(self, spec: Spec) -> httpx.AsyncClient:
        ca = await self.ca_of(spec) if spec.tls.enabled else None
        if ca not in self._clients:
            verify: ssl.SSLContext | bool = True
            if ca:
                verify = ssl.create_default_context(cadata=ca)
            self._clients[ca] = httpx.AsyncClient(verify=verify, timeout=self.timeout)
        return self._clients[ca]

    async def _fetch(self, target: Target) -> str | None:
        try:
            client = await self._client(target.spec)
            r = await client.get(target.url,
                                 extensions={"sni_hostname": target.server_name})
            r.raise_for_status()
            return r.text
        except Exception as exc:  # noqa: BLE001 - left out of the answer, logged
            log.info("metrics API: %s not scraped (%s: %s)", target.pod,
                     type(exc).__name__, exc)
            return None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def secret_ca(secret: dict[str, Any] | None) -> str | None:
    """ca.crt of a kubernetes.io/tls Secret (the operator's, cert-manager's or the user's)."""
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data["ca.crt"]).decode() if data.get("ca.crt") else None
