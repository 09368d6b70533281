"""Hugging Face text-generation-inference (TGI) launcher flags.

TGI serves plain HTTP and takes one API key through an env var, so it listens on
127.0.0.1:ENGINE_LOOPBACK_PORT with neither: `modelserver gateway` (render/gateway.py)
serves network.port in front of it with the builtin engine's TLS (tls.minVersion, 1.3 by
default; reloaded when the certificate is renewed), API keys from the mounted file (rotated
without restart), allow-list and trusted proxies; the price is one loopback hop and one
small container. TGI enables tool calling through its grammar support, with no parser flag.
Every flag rendered here is checked against tests/unit/engine_flags/tgi-launcher-3.x.txt.

Its image runs as root: `uv python install` put Python under /root/.local/share/uv (the
3.x Dockerfile), which no other uid can enter. The container still has no capabilities, no
privilege escalation, a read-only root filesystem and RuntimeDefault seccomp; the gateway
beside it runs as the image user.
"""

from __future__ import annotations

from modeldeploy import contract
from modeldeploy.constants import ENGINE_LOOPBACK_PORT, TGI_IMAGE
from modeldeploy.render.engines.engine_plan import EnginePlan
from modeldeploy.render.engines.model_files import (
    engine_fetch,
    engine_model,
    hub_cache_dir,
    hub_env,
)
from modeldeploy.spec import Spec

QUANTIZATIONS = contract.QUANTIZATIONS_BY_ENGINE["tgi"]
# TGI's --quantize names for our quantization values.
_QUANTIZE = {"int8": "bitsandbytes", "fp8": "fp8", "awq": "awq", "gptq": "gptq"}


def plan(spec: Spec) -> EnginePlan:
    e = spec.engine
    args = ["--model-id", engine_model(spec), "--hostname", "127.0.0.1",
            "--port", str(ENGINE_LOOPBACK_PORT)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += ["--max-concurrent-requests", str(e.max_concurrent_requests),
             "--max-batch-size", str(e.max_batch_size)]
    max_total = e.max_total_tokens or spec.model.context_window
    max_input = e.max_input_tokens or max(1, max_total - spec.defaults.max_tokens)
    args += ["--max-input-tokens", str(max_input), "--max-total-tokens", str(max_total)]
    if e.quantization != "none":
        args += ["--quantize", _QUANTIZE[e.quantization]]
    elif e.dtype in ("float16", "bfloat16"):
        # Never with --quantize: TGI's server refuses the pair ("Only 1 can be set between
        # `dtype` and `quantize`", server/text_generation_server/cli.py serve).
        args += ["--dtype", e.dtype]
    fetch = engine_fetch(spec)
    return EnginePlan(
        image=TGI_IMAGE,
        command=None,
        args=args,
        # HUGGINGFACE_HUB_CACHE is the launcher's own (--huggingface-hub-cache): it hands it
        # to the download step and the shards.
        env=[*hub_env(spec, fetch),
             {"name": "HUGGINGFACE_HUB_CACHE", "value": hub_cache_dir(spec)}],
        health_path="/health",
        metrics={"inflightRequests": "tgi_batch_current_size", "queueDepth": "tgi_queue_size"},
        fetch=fetch,
        run_as_user=0,
        upstream_port=ENGINE_LOOPBACK_PORT,
    )
