"""render.engines: each engine's own flags, images and refusals."""

from __future__ import annotations

import json

import pytest
from helpers_operator import arg_value, make_spec
from modeldeploy.constants import DEFAULT_IMAGE, TGI_IMAGE, VLLM_IMAGE
from modeldeploy.render import engines

pytestmark = pytest.mark.unit


def test_builtin_flags_follow_the_server_contract() -> None:
    p = engines.plan(make_spec({
        "engine": {"quantization": "int8", "maxBatchSize": 4, "maxInputTokens": 1000,
                   "maxTotalTokens": 2000, "toolCallParser": "hermes"},
        "model": {"source": "hf://org/model", "servedName": "chat", "revision": "main",
                  "contextWindow": 32768, "checksums": {"a.bin": "md5:" + "0" * 32}},
        "network": {"allowFrom": {"ipBlocks": ["192.168.1.0/24", "10.0.0.0/8"]}}}))
    a = p.args
    assert p.image == DEFAULT_IMAGE and p.command == ["modelserver"] and a[0] == "serve"
    for flag, value in [("--model", "hf://org/model"), ("--revision", "main"),
                        ("--served-name", "chat"), ("--port", "8080"),
                        ("--quantization", "int8"), ("--max-batch-size", "4"),
                        ("--max-input-tokens", "1000"), ("--max-total-tokens", "2000"),
                        ("--context-window", "32768"), ("--default-max-tokens", "2048"),
                        ("--default-temperature", "0.7"), ("--default-top-p", "0.9"),
                        ("--tool-call-parser", "hermes"), ("--tls-min-version", "1.3"),
                        ("--tls-cert", "/etc/modelserver/tls/tls.crt"),
                        ("--api-keys-file", "/etc/modelserver/auth/keys"),
                        ("--checksum", "a.bin=md5:" + "0" * 32)]:
        assert arg_value(a, flag) == value, flag
    cidrs = [a[i + 1] for i, x in enumerate(a) if x == "--allow-cidr"]
    assert cidrs == ["192.168.1.0/24", "10.0.0.0/8"]
    assert p.metrics["inflightRequests"] == "modelserver_inflight_requests"


def test_server_allow_list_only_when_addresses_are_the_only_clients() -> None:
    """An address list cannot say "pods of namespace X": with namespaces allowed too, the
    server's list would refuse those pods, so the NetworkPolicy alone enforces the set."""
    mixed = engines.plan(make_spec({"network": {"allowFrom": {
        "namespaces": ["chat"], "ipBlocks": ["192.168.1.0/24"]}}})).args
    assert "--allow-cidr" not in mixed
    only = engines.plan(make_spec({"network": {"allowFrom": {
        "ipBlocks": ["192.168.1.0/24"]}}})).args
    assert arg_value(only, "--allow-cidr") == "192.168.1.0/24"


def test_builtin_without_tls_and_auth() -> None:
    a = engines.plan(make_spec({"tls": {"mode": "disabled"}, "auth": {"enabled": False}})).args
    assert "--no-tls" in a and "--no-auth" in a and "--tls-cert" not in a


def test_vllm_enables_tool_calling_and_its_own_flags() -> None:
    p = engines.plan(make_spec({"engine": {"kind": "vllm", "toolCallParser": "hermes",
                                           "quantization": "awq"},
                                "model": {"source": "hf://Qwen/Q", "servedName": "q",
                                          "contextWindow": 32768}}))
    a = p.args
    assert p.image == VLLM_IMAGE and p.command == ["vllm", "serve"]
    # The model is `vllm serve`'s positional argument (--model is deprecated there).
    assert a[0] == "Qwen/Q" and "--model" not in a and arg_value(a, "--served-model-name") == "q"
    assert a[a.index("--enable-auto-tool-choice") + 1:][:2] == ["--tool-call-parser", "hermes"]
    assert arg_value(a, "--max-model-len") == "32768"
    # awq/gptq come from the checkpoint's config, so vLLM can pick its Marlin kernels.
    assert "--quantization" not in a
    overrides = json.loads(arg_value(a, "--override-generation-config"))
    # max_new_tokens there would be a server-wide cap in vLLM, not a default: not rendered.
    assert overrides == {"temperature": 0.7, "top_p": 0.9}
    assert "--tensor-parallel-size" not in a
    # TLS and the API keys are the gateway's (test_render_gateway.py), not vLLM's.
    assert "--ssl-certfile" not in a and "--api-key" not in a
    assert "VLLM_API_KEY" not in {e["name"] for e in p.env}
    assert p.metrics["queueDepth"] == "vllm:num_requests_waiting"


def test_vllm_without_parser_has_no_tool_flags() -> None:
    a = engines.plan(make_spec({"engine": {"kind": "vllm"}})).args
    assert "--enable-auto-tool-choice" not in a and "--quantization" not in a


def test_vllm_fp8_and_tensor_parallel() -> None:
    a = engines.plan(make_spec({"engine": {"kind": "vllm", "quantization": "fp8",
                                           "maxTotalTokens": 8192},
                                "resources": {"gpus": 4}})).args
    # fp8 quantizes an unquantized checkpoint, so it has to be asked for.
    assert arg_value(a, "--quantization") == "fp8"
    assert arg_value(a, "--tensor-parallel-size") == "4"
    assert arg_value(a, "--max-model-len") == "8192"


def test_vllm_caches_are_under_the_writable_home() -> None:
    from modeldeploy.constants import HOME_DIR

    env = {e["name"]: e.get("value") for e in engines.plan(make_spec(
        {"engine": {"kind": "vllm"}})).env}
    for var in ("XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "TRITON_CACHE_DIR",
                "TORCHINDUCTOR_CACHE_DIR"):
        assert env[var].startswith(HOME_DIR + "/"), var


def test_tgi_flags() -> None:
    p = engines.plan(make_spec({"engine": {"kind": "tgi", "quantization": "int8",
                                           "maxConcurrentRequests": 32}}))
    a = p.args
    assert p.image == TGI_IMAGE
    assert arg_value(a, "--model-id") == "org/model"
    assert arg_value(a, "--quantize") == "bitsandbytes"
    assert arg_value(a, "--max-concurrent-requests") == "32"
    assert int(arg_value(a, "--max-input-tokens")) < int(arg_value(a, "--max-total-tokens"))
    assert p.metrics["queueDepth"] == "tgi_queue_size"
    assert p.run_as_user == 0  # its Python lives under /root


@pytest.mark.parametrize(("quant", "dtype_rendered"), [("none", True), ("int8", False),
                                                       ("awq", False), ("fp8", False)])
def test_tgi_never_renders_dtype_with_quantize(quant: str, dtype_rendered: bool) -> None:
    a = engines.plan(make_spec({"engine": {"kind": "tgi", "quantization": quant,
                                           "dtype": "bfloat16"}})).args
    assert ("--dtype" in a) is dtype_rendered and ("--quantize" in a) is (quant != "none")


@pytest.mark.parametrize(("kind", "quant"), [("builtin", "fp8"), ("builtin", "awq"),
                                             ("vllm", "int8")])
def test_engines_refuse_what_they_cannot_do(kind: str, quant: str) -> None:
    with pytest.raises(ValueError, match="not supported by engine"):
        engines.plan(make_spec({"engine": {"kind": kind, "quantization": quant}}))


def test_user_args_env_and_image_come_last() -> None:
    p = engines.plan(make_spec({"engine": {"image": "me/server:1", "args": ["--x", "1"],
                                           "env": [{"name": "A", "value": "b"}]}}))
    assert p.image == "me/server:1" and p.args[-2:] == ["--x", "1"]
    assert p.env[-1] == {"name": "A", "value": "b"}


@pytest.mark.parametrize(("kind", "image", "fetch_image"), [
    ("builtin", None, DEFAULT_IMAGE),
    # A custom builtin image is still a modelserver, so it fills the cache itself.
    ("builtin", "me/server:1", "me/server:1"),
    ("vllm", "me/vllm:1", DEFAULT_IMAGE),
    ("tgi", None, DEFAULT_IMAGE),
])
def test_every_engine_fills_the_cache_with_modelserver_fetch(
        kind: str, image: str | None, fetch_image: str) -> None:
    engine = {"kind": kind, **({"image": image} if image else {})}
    p = engines.plan(make_spec({"engine": engine, "tls": {"mode": "disabled"},
                                "model": {"cache": {"size": "50Gi"}}}))
    assert p.fetch is not None
    assert (p.fetch.image, p.fetch.command) == (fetch_image, ["modelserver"])
    assert p.fetch.args[:3] == ["fetch", "--model", "hf://org/model"]


def test_no_cache_volume_means_no_fetch() -> None:
    assert engines.plan(make_spec()).fetch is None
