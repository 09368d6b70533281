"""Hugging Face text-generation-inference (TGI) launcher flags.

TGI serves plain HTTP only (the CRD requires tls.mode: disabled for it; terminate TLS at
an Ingress) and enables tool calling through its grammar support, with no parser flag.
"""

from __future__ import annotations

from modeldeploy import contract
from modeldeploy.constants import TGI_IMAGE
from modeldeploy.render.engines.api_key import api_key_env
from modeldeploy.render.engines.builtin import fetch_plan
from modeldeploy.render.engines.engine_plan import EnginePlan
from modeldeploy.spec import Spec

QUANTIZATIONS = contract.QUANTIZATIONS_BY_ENGINE["tgi"]
# TGI's --quantize names for our quantization values.
_QUANTIZE = {"int8": "bitsandbytes", "fp8": "fp8", "awq": "awq", "gptq": "gptq"}


def plan(spec: Spec) -> EnginePlan:
    e = spec.engine
    model = spec.model.local_path() or spec.model.hf_id or spec.model.source
    args = ["--model-id", model, "--hostname", "0.0.0.0", "--port", str(spec.network.port)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += ["--max-concurrent-requests", str(e.max_concurrent_requests),
             "--max-batch-size", str(e.max_batch_size)]
    max_total = e.max_total_tokens or spec.model.context_window
    max_input = e.max_input_tokens or max(1, max_total - spec.defaults.max_tokens)
    args += ["--max-input-tokens", str(max_input), "--max-total-tokens", str(max_total)]
    if e.quantization != "none":
        args += ["--quantize", _QUANTIZE[e.quantization]]
    if e.dtype in ("float16", "bfloat16"):
        args += ["--dtype", e.dtype]
    return EnginePlan(
        image=TGI_IMAGE,
        command=None,
        args=args,
        env=[{"name": "HF_HUB_CACHE", "value": spec.cache_dir}, *api_key_env(spec, "API_KEY")],
        health_path="/health",
        metrics={"inflightRequests": "tgi_batch_current_size", "queueDepth": "tgi_queue_size"},
        fetch=fetch_plan(spec),
    )
