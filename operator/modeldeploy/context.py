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
    missing_kinds: set[str] = field(default_factory=set)  # APIs absent (cert-manager)
    children: Children = field(default_factory=Children)  # kept current by informers
    # PriorityClass tiers seen to exist, and when (monotonic): checked again after a while
    priority_seen: dict[str, float] = field(default_factory=dict)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
