"""The types an engine module hands to the generic pod plan (render/workload.py).

Kept apart from the registry in engines/__init__.py so that each engine module can import
them while the registry imports every engine module at the top, with no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FetchPlan:
    """The init container that fills the model cache volume before the engine starts."""

    image: str
    command: list[str]
    args: list[str]


@dataclass(frozen=True)
class EnginePlan:
    image: str
    command: list[str] | None
    args: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    health_path: str = "/health"
    # Prometheus gauge names the HPA scales on, by autoscaling.metric.
    metrics: dict[str, str] = field(default_factory=dict)
    # None when the model has no cache volume to fill (the engine reads it directly).
    fetch: FetchPlan | None = None
    # The uid the engine's container must run as, when its image cannot run as the image
    # user (constants.IMAGE_UID) of the pod: 0 for an image whose Python lives under /root.
    # None keeps the pod's non-root user. Everything else in the securityContext stays
    # locked down either way (render/workload.py container_security).
    run_as_user: int | None = None
    # The loopback port of an engine that serves no security layer of its own (vLLM, TGI):
    # render/gateway.py then puts `modelserver gateway` in front of it on network.port, and
    # the probes, the Service and the TLS and API key mounts go to the gateway. None: the
    # engine is the bundled server and serves network.port itself.
    upstream_port: int | None = None
