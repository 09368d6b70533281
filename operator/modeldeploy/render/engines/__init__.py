"""One module per inference engine; the generic pod plan only sees an EnginePlan.

Engine-specific knowledge (image, command-line flags, health path, metric names, which
quantizations exist, how tool calling is switched on) never leaks into render/workload.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from modeldeploy.spec import Spec


@dataclass(frozen=True)
class EnginePlan:
    image: str
    command: list[str] | None
    args: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    health_path: str = "/health"
    # Prometheus gauge names the HPA scales on, by autoscaling.metric.
    metrics: dict[str, str] = field(default_factory=dict)


def engine_module(kind: str) -> ModuleType:
    from modeldeploy.render.engines import builtin, tgi, vllm

    modules = {"builtin": builtin, "vllm": vllm, "tgi": tgi}
    if kind not in modules:
        raise ValueError(f"unknown engine.kind {kind!r}")
    return modules[kind]


def plan(spec: Spec) -> EnginePlan:
    module = engine_module(spec.engine.kind)
    if spec.engine.quantization not in module.QUANTIZATIONS:
        # The CRD's CEL rules refuse this at apply time; this guards direct callers.
        raise ValueError(
            f"engine.quantization {spec.engine.quantization!r} is not supported by "
            f"engine {spec.engine.kind!r} (supported: {', '.join(module.QUANTIZATIONS)})"
        )
    p: EnginePlan = module.plan(spec)
    # The user's extras come last so they can override the engine's own flags.
    return EnginePlan(
        image=spec.engine.image or p.image,
        command=p.command,
        args=[*p.args, *spec.engine.args],
        env=[*p.env, *[dict(e) for e in spec.engine.env]],
        health_path=p.health_path,
        metrics=p.metrics,
    )


def api_key_env(spec: Spec, var: str) -> list[dict[str, Any]]:
    """An env var holding the first API key, for engines that take one key."""
    if not spec.auth.enabled:
        return []
    return [{
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret_name, "key": "primary"}},
    }]
