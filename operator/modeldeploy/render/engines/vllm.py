"""vLLM's OpenAI server (image vllm/vllm-openai) with its own flags.

It listens on 127.0.0.1:ENGINE_LOOPBACK_PORT with no TLS and no API key: `modelserver
gateway` (render/gateway.py) serves network.port in front of it with the same TLS, keys
file and allow-list as the builtin engine. (vLLM's own --api-key takes one key from an env
var read at start, so a rotated key never reached it.)

Every flag rendered here is one of `vllm serve`'s at the pinned version:
tests/unit/test_engine_flags.py checks them against tests/unit/engine_flags/vllm-v0.11.0.txt.
"""

from __future__ import annotations

import json

from modeldeploy import contract
from modeldeploy.constants import ENGINE_LOOPBACK_PORT, HOME_DIR, VLLM_IMAGE
from modeldeploy.render.engines.engine_plan import EnginePlan
from modeldeploy.render.engines.model_files import engine_fetch, engine_model, hub_env
from modeldeploy.spec import Spec

# vLLM has no plain "int8" weight mode; fp8/awq/gptq are its own names.
QUANTIZATIONS = contract.QUANTIZATIONS_BY_ENGINE["vllm"]
# Quantizations vLLM applies to an unquantized checkpoint, so they must be asked for. awq and
# gptq checkpoints say so in their config.json, and vLLM then picks the fastest kernel itself
# (awq_marlin, gptq_marlin); forcing `--quantization awq|gptq` would rule Marlin out.
_EXPLICIT_QUANTIZATIONS = ("fp8",)

# The image's caches, all under the writable $HOME (an emptyDir; the root filesystem is
# read-only and the pod's uid has no passwd entry, so nothing may fall back to getpwuid).
CACHE_ENV = [
    {"name": "USER", "value": "model"},  # getpass.getuser() without a passwd entry
    {"name": "XDG_CACHE_HOME", "value": f"{HOME_DIR}/.cache"},
    {"name": "XDG_CONFIG_HOME", "value": f"{HOME_DIR}/.config"},
    {"name": "VLLM_CACHE_ROOT", "value": f"{HOME_DIR}/.cache/vllm"},
    {"name": "VLLM_CONFIG_ROOT", "value": f"{HOME_DIR}/.config/vllm"},
    {"name": "TRITON_CACHE_DIR", "value": f"{HOME_DIR}/.cache/triton"},
    {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{HOME_DIR}/.cache/torchinductor"},
]


def plan(spec: Spec) -> EnginePlan:
    e, d = spec.engine, spec.defaults
    # `vllm serve MODEL`: the positional form (`--model` is deprecated there). The command
    # is set, so the image's ENTRYPOINT (api_server or `vllm serve`) does not matter.
    args = [engine_model(spec), "--served-model-name", spec.model.served_name,
            "--host", "127.0.0.1", "--port", str(ENGINE_LOOPBACK_PORT)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += ["--dtype", e.dtype,
             "--max-model-len", str(e.max_total_tokens or spec.model.context_window),
             "--max-num-seqs", str(e.max_batch_size)]
    if spec.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    if e.quantization in _EXPLICIT_QUANTIZATIONS:
        args += ["--quantization", e.quantization]
    if e.tool_call_parser:
        # Without both flags vLLM returns tool calls as plain text in `content`.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", e.tool_call_parser]
    # Sampling defaults for requests that set none. defaults.maxTokens is not rendered:
    # vLLM turns a generation config's max_new_tokens into a server-wide cap (min() with the
    # request's max_tokens, vllm/entrypoints/utils.py get_max_tokens), not a default.
    overrides = {"temperature": d.temperature, "top_p": d.top_p}
    args += ["--override-generation-config", json.dumps(overrides, sort_keys=True)]
    fetch = engine_fetch(spec)
    return EnginePlan(
        image=VLLM_IMAGE,
        command=["vllm", "serve"],
        args=args,
        env=[*hub_env(spec, fetch), *CACHE_ENV],
        health_path="/health",
        metrics={
            "inflightRequests": "vllm:num_requests_running",
            "queueDepth": "vllm:num_requests_waiting",
        },
        fetch=fetch,
        upstream_port=ENGINE_LOOPBACK_PORT,
    )
