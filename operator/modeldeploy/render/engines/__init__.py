"""One module per inference engine; the generic pod plan only sees an EnginePlan.

Engine-specific knowledge (image, command-line flags, health path, metric names, which
quantizations exist, how tool calling is switched on, how the model cache is filled)
never leaks into render/workload.py. This package is the registry: kind → module, and
plan() applies what the user set on top of the engine's own plan. The types live in
engine_plan.py so the engine modules can import them without a cycle.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from modeldeploy.render.engines import builtin, tgi, vllm
from modeldeploy.render.engines.engine_plan import EnginePlan
from modeldeploy.spec import Spec

MODULES: dict[str, ModuleType] = {"builtin": builtin, "vllm": vllm, "tgi": tgi}


def engine_module(kind: str) -> ModuleType:
    if kind not in MODULES:
        raise ValueError(f"unknown engine.kind {kind!r}")
    return MODULES[kind]


def plan(spec: Spec) -> EnginePlan:
    module = engine_module(spec.engine.kind)
    if spec.engine.quantization not in module.QUANTIZATIONS:
        # The CRD's CEL rules refuse this at apply time; this guards direct callers.
        raise ValueError(
            f"engine.quantization {spec.engine.quantization!r} is not supported by "
            f"engine {spec.engine.kind!r} (supported: {', '.join(module.QUANTIZATIONS)})"
        )
    p: EnginePlan = module.plan(spec)
    if p.upstream_port == spec.network.port:
        # The CRD refuses this at apply time too: the engine and its gateway share the
        # pod's network, so they cannot both listen on one port.
        raise ValueError(
            f"network.port {spec.network.port} is engine {spec.engine.kind!r}'s own port "
            "inside the pod (the gateway serves network.port in front of it); choose another"
        )
    # The user's extras come last so they can override the engine's own flags.
    return dataclasses.replace(
        p,
        image=spec.engine.image or p.image,
        args=[*p.args, *spec.engine.args],
        env=[*p.env, *[dict(e) for e in spec.engine.env]],
    )
