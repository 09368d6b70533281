"""vLLM's OpenAI server (image vllm/vllm-openai) with its own flags."""

from __future__ import annotations

import json

from modeldeploy import contract
from modeldeploy.constants import TLS_DIR, VLLM_IMAGE
from modeldeploy.render.engines.api_key import api_key_env
from modeldeploy.render.engines.builtin import fetch_plan
from modeldeploy.render.engines.engine_plan import EnginePlan
from modeldeploy.spec import Spec

# vLLM has no plain "int8" weight mode; fp8/awq/gptq are its own names.
QUANTIZATIONS = contract.QUANTIZATIONS_BY_ENGINE["vllm"]


def plan(spec: Spec) -> EnginePlan:
    e, d = spec.engine, spec.defaults
    model = spec.model.local_path() or spec.model.hf_id or spec.model.source
    args = ["--model", model, "--served-model-name", spec.model.served_name,
            "--host", "0.0.0.0", "--port", str(spec.network.port)]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    args += ["--dtype", e.dtype, "--max-model-len", str(spec.model.context_window),
             "--max-num-seqs", str(e.max_batch_size), "--download-dir", spec.cache_dir]
    if e.quantization != "none":
        args += ["--quantization", e.quantization]
    if e.tool_call_parser:
        # Without both flags vLLM returns tool calls as plain text in `content`.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", e.tool_call_parser]
    overrides = {"temperature": d.temperature, "top_p": d.top_p, "max_new_tokens": d.max_tokens}
    args += ["--override-generation-config", json.dumps(overrides, sort_keys=True)]
    if spec.tls.enabled:
        args += ["--ssl-certfile", f"{TLS_DIR}/tls.crt", "--ssl-keyfile", f"{TLS_DIR}/tls.key"]
    return EnginePlan(
        image=VLLM_IMAGE,
        command=None,
        args=args,
        env=[{"name": "HF_HOME", "value": spec.cache_dir}, *api_key_env(spec, "VLLM_API_KEY")],
        health_path="/health",
        metrics={
            "inflightRequests": "vllm:num_requests_running",
            "queueDepth": "vllm:num_requests_waiting",
        },
        fetch=fetch_plan(spec),
    )
