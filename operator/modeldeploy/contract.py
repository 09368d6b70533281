"""The values the CRD, the operator and the bundled server must agree on, defined once.

The CRD's enums and defaults (crd.py), the typed spec's defaults (spec.py), the engine
plans (render/engines/) and `modelserver serve`'s flags (images/server/modelserver/
config.py) all read them from here; the server image installs this package, and this
module imports nothing, so the server pays nothing for it. tests/unit/test_contract.py
parses every rendered builtin command line with the server's own argument parser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ENGINE_KINDS = ("builtin", "vllm", "tgi")
DEFAULT_ENGINE = "builtin"

DTYPES = ("auto", "float16", "bfloat16", "float32")
DEFAULT_DTYPE = "auto"

# Weight quantization each engine can serve. builtin: weight-only int8
# (images/server/modelserver/quant.py); vLLM has no int8 mode; TGI maps int8 to bitsandbytes.
QUANTIZATIONS_BY_ENGINE: dict[str, tuple[str, ...]] = {
    "builtin": ("none", "int8"),
    "vllm": ("none", "fp8", "awq", "gptq"),
    "tgi": ("none", "int8", "fp8", "awq", "gptq"),
}
QUANTIZATIONS = ("none", "int8", "fp8", "awq", "gptq")
DEFAULT_QUANTIZATION = "none"

# Tool-call parsers of the builtin engine (modelserver/toolcalls.py). hermes reads
# `<tool_call>{…}</tool_call>` (Qwen, Hermes, SmolLM) and bare JSON; json only bare JSON;
# none turns tool calling off. TGI has no parser flag.
BUILTIN_TOOL_CALL_PARSERS = ("hermes", "json", "none")
DEFAULT_BUILTIN_TOOL_CALL_PARSER = "hermes"
# vLLM v0.11.0's parsers (constants.VLLM_IMAGE): the names registered with
# ToolParserManager.register_module in vllm/entrypoints/openai/tool_parsers/. A vLLM pin
# change updates this list and tests/unit/engine_flags/vllm-*.txt together.
VLLM_TOOL_CALL_PARSERS = (
    "deepseek_v3", "deepseek_v31", "glm45", "granite", "granite-20b-fc", "hermes",
    "hunyuan_a13b", "internlm", "jamba", "kimi_k2", "llama3_json", "llama4_json",
    "llama4_pythonic", "longcat", "minimax", "mistral", "openai", "phi4_mini_json",
    "pythonic", "qwen3_coder", "qwen3_xml", "seed_oss", "step3", "xlam",
)

DEFAULT_MAX_BATCH_SIZE = 8  # the deployment guide suggests 4-8 on one GPU
DEFAULT_MAX_CONCURRENT_REQUESTS = 128  # queued + running, beyond which → 429 (or overflow)
DEFAULT_PORT = 8080
TLS_VERSIONS = ("1.2", "1.3")
DEFAULT_TLS_MIN_VERSION = "1.3"
DEFAULT_CONTEXT_WINDOW = 4096

# The answer cache (modelserver/cache.py): how long a cached answer lives in Redis, and
# the port of a redis:// URL that names none.
DEFAULT_CACHE_TTL_SECONDS = 3600
REDIS_DEFAULT_PORT = 6379
# Default ports of the other URL schemes the operator turns into NetworkPolicy egress.
URL_DEFAULT_PORTS = {"redis": REDIS_DEFAULT_PORT, "http": 80, "https": 443}

# Sampling defaults for requests that set none. A ModelDeployment gets the deployment
# guide's values; a bare `modelserver serve` keeps the OpenAI API's own defaults
# (temperature 1, top_p 1) and a short answer, so a local run behaves like the API.
GUIDE_MAX_TOKENS = 2048
GUIDE_TEMPERATURE = 0.7
GUIDE_TOP_P = 0.9
SERVER_MAX_TOKENS = 256
SERVER_TEMPERATURE = 1.0
SERVER_TOP_P = 1.0


@dataclass(frozen=True)
class EngineOptions:
    """The serving options a ModelDeployment's engine (spec.EngineSpec) and `modelserver
    serve` (modelserver.config.Settings) both take: each inherits them from here."""

    dtype: str = DEFAULT_DTYPE
    quantization: str = DEFAULT_QUANTIZATION
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_input_tokens: int | None = None  # None: the model's context window decides
    max_total_tokens: int | None = None


# The model cache's layout, as `modelserver fetch` writes it and every engine reads it:
# hf:// models in the Hugging Face hub layout under <cache>/hub (models--org--name/…), an
# https:// file list in a folder named by the list's hash.
def hub_cache_dir(cache: str) -> str:
    return f"{cache.rstrip('/')}/hub"


def url_cache_dir(urls: list[str], cache: str) -> str:
    digest = hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]
    return f"{cache.rstrip('/')}/urls/{digest}"


def source_urls(source: str) -> list[str]:
    """An https:// source's files: one URL, or several separated by commas."""
    return [u.strip() for u in source.split(",") if u.strip()]
