"""`modelserver gateway`: the bundled image in front of an engine that listens on loopback.

vLLM and TGI bind 127.0.0.1:<EnginePlan.upstream_port>; the gateway serves network.port with
the same security layer as the builtin engine (render/server_security.py), so TLS with
reload, several API keys reloaded from the mounted Secret, the allow-list and the trusted
proxies work the same for every engine, and so do the answer cache, overflow and log
redaction (render/server_features.py). Its /health answers 200 only when the engine's does,
and its /metrics appends the engine's, so probes, the Service, the NetworkPolicy and the
autoscaler all point at it. What it costs: one loopback hop per request and one small
container (constants.GATEWAY_CPU / GATEWAY_MEMORY).
"""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import DEFAULT_IMAGE, GATEWAY_CPU, GATEWAY_MEMORY
from modeldeploy.render.server_features import feature_args
from modeldeploy.render.server_security import security_args
from modeldeploy.spec import Spec

CONTAINER = "gateway"
# The bundled server image, as for the builtin engine and the fetch step: engine.image
# replaces the engine's image, never the gateway's.
IMAGE = DEFAULT_IMAGE
COMMAND = ["modelserver"]
# 200 only while the engine's own /health answers 200.
HEALTH_PATH = "/health"


def upstream_url(upstream_port: int) -> str:
    return f"http://127.0.0.1:{upstream_port}"


def args(spec: Spec, upstream_port: int) -> list[str]:
    return ["gateway", "--upstream", upstream_url(upstream_port),
            "--port", str(spec.network.port),
            *security_args(spec),
            *feature_args(spec),
            # The admission limit (queued + running, then 429) is the gateway's to enforce
            # for any engine.
            "--max-concurrent-requests", str(spec.engine.max_concurrent_requests)]


def resources() -> dict[str, Any]:
    """Requests == limits whatever qos.guaranteed says: a Guaranteed pod needs them in
    every container, and the gateway's needs do not grow with the model."""
    size = {"cpu": GATEWAY_CPU, "memory": GATEWAY_MEMORY}
    return {"requests": dict(size), "limits": dict(size)}
