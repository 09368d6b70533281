"""What every reconcile shares: the client, the operator's namespace, process caches."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from modeldeploy import pki
from modeldeploy.children import Children
from modeldeploy.kube import Kube


@dataclass
class Context:
    kube: Kube
    operator_namespace: str
    ca: pki.KeyPair | None = None  # the operator CA, once read or created
    ca_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Optional APIs found absent or not allowed (informer.py). The PodMonitor API counts
    # as absent until its informer has listed it: PodMonitors are made unasked, so only
    # where the API is known to be served.
    missing_kinds: set[str] = field(default_factory=lambda: {"PodMonitor"})
    children: Children = field(default_factory=Children)  # kept current by informers
    # PriorityClass tiers seen to exist, and when (monotonic): checked again after a while
    priority_seen: dict[str, float] = field(default_factory=dict)
    # The operator's settings reconcile applies (config.Config, filled from the flags).
    priority_tier_namespaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scraper_namespaces: tuple[str, ...] = ()
    pod_monitor_labels: dict[str, str] = field(default_factory=dict)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
