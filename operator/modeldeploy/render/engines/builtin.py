"""The bundled server (images/server, `modelserver serve`): the default engine.

Its `modelserver fetch` also fills the model cache for every engine (it verifies
checksums): render/engines/model_files.py gives the other engines that step.
"""

from __future__ import annotations

from modeldeploy import contract
from modeldeploy.constants import DEFAULT_IMAGE
from modeldeploy.render.engines.engine_plan import EnginePlan, FetchPlan
from modeldeploy.render.server_features import feature_args
from modeldeploy.render.server_security import security_args
from modeldeploy.spec import Spec

QUANTIZATIONS = contract.QUANTIZATIONS_BY_ENGINE["builtin"]


def model_arg(spec: Spec) -> str:
    return spec.model.local_path() or spec.model.source


def checksum_args(spec: Spec) -> list[str]:
    args: list[str] = []
    for path, digest in sorted(spec.model.checksums.items()):
        args += ["--checksum", f"{path}={digest}"]
    return args


def fetch_args(spec: Spec) -> list[str]:
    """Arguments of the init container that fills the model cache volume."""
    args = ["fetch", "--model", model_arg(spec)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += ["--cache-dir", spec.cache_dir, *checksum_args(spec)]
    return args


def fetch_plan(spec: Spec, image: str = DEFAULT_IMAGE,
               always: bool = False) -> FetchPlan | None:
    """The cache-filling init container; none without a cache volume to fill, unless
    `always` (an engine that cannot download the source itself fills the pod's emptyDir)."""
    if spec.model.cache is None and not always:
        return None
    return FetchPlan(image=image, command=["modelserver"], args=fetch_args(spec))


def plan(spec: Spec) -> EnginePlan:
    e, d = spec.engine, spec.defaults
    args = ["serve", "--model", model_arg(spec)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += [
        "--served-name", spec.model.served_name,
        "--port", str(spec.network.port),
        "--dtype", e.dtype,
        "--quantization", e.quantization,
        "--max-batch-size", str(e.max_batch_size),
        "--max-concurrent-requests", str(e.max_concurrent_requests),
    ]
    if e.max_input_tokens is not None:
        args += ["--max-input-tokens", str(e.max_input_tokens)]
    if e.max_total_tokens is not None:
        args += ["--max-total-tokens", str(e.max_total_tokens)]
    args += [
        "--context-window", str(spec.model.context_window),
        "--default-max-tokens", str(d.max_tokens),
        "--default-temperature", str(d.temperature),
        "--default-top-p", str(d.top_p),
    ]
    # Rendered even when unset, so the pod's arguments say which parser serves it.
    args += ["--tool-call-parser",
             e.tool_call_parser or contract.DEFAULT_BUILTIN_TOOL_CALL_PARSER]
    args += security_args(spec)
    args += feature_args(spec)
    args += ["--model-cache-dir", spec.cache_dir, *checksum_args(spec)]
    return EnginePlan(
        image=DEFAULT_IMAGE,
        command=["modelserver"],
        args=args,
        health_path="/health",
        metrics={
            "inflightRequests": "modelserver_inflight_requests",
            "queueDepth": "modelserver_queue_depth",
        },
        # A custom image of this engine is still a modelserver: let it fetch as well.
        fetch=fetch_plan(spec, spec.engine.image or DEFAULT_IMAGE),
    )
