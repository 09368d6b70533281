"""The contract between the operator and the bundled server: every builtin pod the
operator renders, and the gateway container in front of vLLM and TGI, is parsed by the
server's own argument parser (modelserver/config.py, no torch), and the settings it yields
are the spec's. A flag renamed, dropped or given a new meaning on either side fails here,
not on a node."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_operator import container, inputs
from modeldeploy import contract
from modeldeploy.constants import AUTH_DIR, ENGINE_LOOPBACK_PORT, TLS_DIR
from modeldeploy.render import desired
from modeldeploy.render.server_features import (
    OVERFLOW_API_KEY_FILE,
    OVERFLOW_CA_FILE,
    REDIS_PASSWORD_FILE,
)
from modeldeploy.spec import Spec, parse
from modelserver.config import Checksum, Settings, settings_from_args

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                found.append((f"{path.stem}/{doc['metadata']['name']}", doc["spec"]))
    return found


def as_builtin(spec: dict[str, Any]) -> dict[str, Any]:
    """The same spec served by the builtin engine: the options it has no use for go."""
    spec = copy.deepcopy(spec)
    engine = spec.setdefault("engine", {})
    engine["kind"] = "builtin"
    engine.pop("image", None)
    engine.pop("args", None)  # extras are the user's, passed through unparsed
    if engine.get("quantization") not in contract.QUANTIZATIONS_BY_ENGINE["builtin"]:
        engine.pop("quantization", None)
    if engine.get("toolCallParser") not in contract.BUILTIN_TOOL_CALL_PARSERS:
        engine.pop("toolCallParser", None)
    return spec


def server_settings(cont: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                    ) -> tuple[str, Settings]:
    """What `modelserver` makes of a rendered container: its env, then its arguments."""
    for key in [k for k in os.environ if k.startswith("MODELSERVER_")]:
        monkeypatch.delenv(key)
    for env in cont.get("env", []):
        if env["name"].startswith("MODELSERVER_"):
            assert "value" in env, f"{env['name']} comes from a reference the test cannot read"
            monkeypatch.setenv(env["name"], env["value"])
    assert cont["command"] == ["modelserver"]
    return settings_from_args(cont["args"])


def deployment_of(spec: Spec) -> dict[str, Any]:
    return next(o for o in desired(spec, inputs()) if o["kind"] == "Deployment")


def expected_security(spec: Spec) -> dict[str, Any]:
    """The settings `serve` and `gateway` both take from TLS, auth and network."""
    return {
        "port": spec.network.port,
        "no_tls": not spec.tls.enabled,
        "tls_cert": f"{TLS_DIR}/tls.crt" if spec.tls.enabled else None,
        "tls_key": f"{TLS_DIR}/tls.key" if spec.tls.enabled else None,
        "tls_min_version": spec.tls.min_version,
        "no_auth": not spec.auth.enabled,
        "api_keys_file": f"{AUTH_DIR}/keys" if spec.auth.enabled else None,
        "allow_cidr": list(spec.network.allow_from.server_cidrs),
        "trusted_proxy_cidr": list(spec.network.ingress.trusted_proxies
                                   if spec.network.ingress else ()),
        **expected_features(spec),
    }


def expected_features(spec: Spec) -> dict[str, Any]:
    """The answer cache, overflow and redaction settings `serve` and `gateway` both take;
    unset sections leave the server's own defaults (which are contract's)."""
    cache, overflow = spec.answer_cache, spec.overflow
    return {
        "redact_logs": spec.logging.redact,
        "cache_redis_url": cache.url if cache else None,
        "cache_ttl": cache.ttl_seconds if cache else contract.DEFAULT_CACHE_TTL_SECONDS,
        "cache_redis_password_file":
            REDIS_PASSWORD_FILE if cache and cache.password_secret_name else None,
        "overflow_url": overflow.url if overflow else None,
        "overflow_api_key_file":
            OVERFLOW_API_KEY_FILE if overflow and overflow.api_key_secret_name else None,
        "overflow_ca_file": OVERFLOW_CA_FILE if overflow and overflow.ca_secret_name else None,
        "overflow_timeout": (float(overflow.timeout_seconds)
                             if overflow and overflow.timeout_seconds is not None else None),
        "redact_overflow_requests": bool(overflow and overflow.redact_requests),
    }


def expected(spec: Spec) -> dict[str, Any]:
    e, d = spec.engine, spec.defaults
    return {
        **expected_security(spec),
        "served_name": spec.model.served_name,
        "revision": spec.model.revision,
        "dtype": e.dtype,
        "quantization": e.quantization,
        "max_batch_size": e.max_batch_size,
        "max_concurrent_requests": e.max_concurrent_requests,
        "max_input_tokens": e.max_input_tokens,
        "max_total_tokens": e.max_total_tokens,
        "context_window": spec.model.context_window,
        "default_max_tokens": d.max_tokens,
        "default_temperature": d.temperature,
        "default_top_p": d.top_p,
        "tool_call_parser": e.tool_call_parser or contract.DEFAULT_BUILTIN_TOOL_CALL_PARSER,
        "model_cache_dir": spec.cache_dir,
        "checksum": [Checksum.parse(f"{path}={digest}")
                     for path, digest in sorted(spec.model.checksums.items())],
    }


def assert_server_serves(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = deployment_of(spec)["spec"]["template"]["spec"]
    command, settings = server_settings(container({"spec": {"template": {"spec": pod}}}),
                                        monkeypatch)
    assert command == "serve"
    settings.validate()  # the combination is one the server starts with
    got = {key: getattr(settings, key) for key in expected(spec)}
    assert got == expected(spec)
    local = spec.model.local_path()
    assert settings.model in ({local} if local else {spec.model.source, spec.cache_dir})
    for init in pod.get("initContainers", []):
        if init.get("command") == ["modelserver"]:
            fetch_command, fetched = server_settings(init, monkeypatch)
            assert fetch_command == "fetch"
            assert fetched.model == spec.model.source
            assert fetched.model_cache_dir == spec.cache_dir
            assert fetched.checksum == expected(spec)["checksum"]


@pytest.mark.parametrize(("case", "raw"), _examples(), ids=[c for c, _ in _examples()])
def test_every_example_parses_as_the_builtin_server(
        case: str, raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert_server_serves(parse("m", "ns", "uid", as_builtin(raw)), monkeypatch)


BASE = {"model": {"source": "hf://org/model"}}
# One value of every engine, defaults, network, TLS and auth option the builtin engine
# renders into flags, each applied alone on a minimal spec.
OPTIONS: list[dict[str, Any]] = [
    *({"engine": {"dtype": dtype}} for dtype in contract.DTYPES),
    *({"engine": {"quantization": q}} for q in contract.QUANTIZATIONS_BY_ENGINE["builtin"]),
    *({"engine": {"toolCallParser": p}} for p in contract.BUILTIN_TOOL_CALL_PARSERS),
    {"engine": {"maxBatchSize": 3, "maxConcurrentRequests": 7}},
    {"engine": {"maxInputTokens": 100, "maxTotalTokens": 200}},
    {"defaults": {"maxTokens": 99, "temperature": 0.0, "topP": 0.5}},
    {"model": {"source": "hf://org/model", "revision": "v2", "servedName": "chat",
               "contextWindow": 32768, "checksums": {"a.bin": "md5:" + "0" * 32}}},
    {"model": {"source": "hf://org/model", "cache": {"size": "10Gi"},
               "checksums": {"w/b.safetensors": "sha256:" + "f" * 64}}},
    {"model": {"source": "pvc://weights/smollm2/model.gguf"}},
    {"model": {"source": "file:///models/m"}},
    {"model": {"source": "https://files.example/m.gguf"}},
    {"network": {"port": 9443, "allowFrom": {"ipBlocks": ["192.168.1.0/24"]}}},
    {"network": {"allowFrom": {"namespaces": ["agents"], "ipBlocks": ["10.0.0.0/8"]}}},
    {"network": {"allowFrom": {"ipBlocks": ["192.168.1.0/24"]}, "ingress": {
        "host": "chat.lan", "trustedProxies": ["10.244.0.0/16", "fd00:10:244::/56"]}}},
    {"tls": {"mode": "disabled"}},
    {"tls": {"minVersion": "1.2"}},
    {"auth": {"enabled": False}},
    {"auth": {"apiKeys": {"count": 3}}},
    {"logging": {"redact": True}},
    {"answerCache": {"redisUrl": "redis://redis.cache.svc:6380/1"}},
    {"answerCache": {"redisUrl": "redis://10.0.0.5", "passwordSecretName": "redis",
                     "ttlSeconds": 90}},
    {"overflow": {"url": "http://10.0.0.9/v1"}},
    {"overflow": {"url": "https://big.models.svc:8080/v1", "apiKeySecretName": "key",
                  "caSecretName": "big-tls", "timeoutSeconds": 30, "redactRequests": True}},
]


@pytest.mark.parametrize("option", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_every_builtin_option_parses_as_the_server(
        option: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert_server_serves(parse("m", "ns", "uid", {**BASE, **option}), monkeypatch)


def test_unset_options_are_the_servers_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CRD and the server share a default, an unset field means the same on
    both sides (the sampling defaults differ on purpose: contract.py says why)."""
    spec = parse("m", "ns", "uid", BASE)
    _, settings = server_settings(container(deployment_of(spec)), monkeypatch)
    server = Settings()
    for key in ("port", "dtype", "quantization", "max_batch_size", "max_concurrent_requests",
                "tool_call_parser", "tls_min_version", "cache_ttl", "redact_logs",
                "overflow_timeout", "redact_overflow_requests"):
        assert getattr(settings, key) == getattr(server, key), key


def test_the_server_refuses_a_flag_it_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard the contract relies on: the server exits on an unknown flag, even one
    that is a prefix of a real flag (argparse would take `--max-batch` for
    `--max-batch-size`), so a flag renamed on one side cannot pass silently."""
    spec = parse("m", "ns", "uid", BASE)
    cont = container(deployment_of(spec))
    cont["args"] = [a.replace("--max-batch-size", "--max-batch") for a in cont["args"]]
    with pytest.raises(SystemExit):
        server_settings(cont, monkeypatch)


# --- the gateway in front of vLLM and TGI (`modelserver gateway`) ---
# Fails until the server's `gateway` subcommand is merged (images/server, issue 12 server
# side): then its parser must take exactly what the operator renders.

GATEWAY_ENGINES = ("vllm", "tgi")


def as_engine(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """The same spec served by vLLM or TGI; the gateway's flags come only from network,
    TLS, auth, the admission limit, the answer cache, overflow and logging, so the
    engine's own options go."""
    spec = copy.deepcopy(spec)
    spec["engine"] = {"kind": kind}
    spec.pop("defaults", None)
    return spec


def gateway_container(spec: Spec) -> dict[str, Any]:
    pod = deployment_of(spec)["spec"]["template"]["spec"]
    (gateway,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    return gateway


def expected_gateway(spec: Spec) -> dict[str, Any]:
    return {**expected_security(spec),
            "upstream": f"http://127.0.0.1:{ENGINE_LOOPBACK_PORT}",
            "max_concurrent_requests": spec.engine.max_concurrent_requests}


def assert_gateway_serves(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    command, settings = server_settings(gateway_container(spec), monkeypatch)
    assert command == "gateway"
    settings.validate()  # the combination is one the gateway starts with
    got = {key: getattr(settings, key) for key in expected_gateway(spec)}
    assert got == expected_gateway(spec)


GATEWAY_OPTIONS = [o for o in OPTIONS
                   if set(o) <= {"network", "tls", "auth", "logging", "answerCache", "overflow"}]


@pytest.mark.parametrize("kind", GATEWAY_ENGINES)
@pytest.mark.parametrize("option", GATEWAY_OPTIONS, ids=[str(o) for o in GATEWAY_OPTIONS])
def test_every_gateway_option_parses_as_the_server(
        kind: str, option: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert_gateway_serves(parse("m", "ns", "uid", as_engine({**BASE, **option}, kind)),
                          monkeypatch)


@pytest.mark.parametrize("kind", GATEWAY_ENGINES)
@pytest.mark.parametrize(("case", "raw"), _examples(), ids=[c for c, _ in _examples()])
def test_every_example_parses_as_the_gateway(
        kind: str, case: str, raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert_gateway_serves(parse("m", "ns", "uid", as_engine(raw, kind)), monkeypatch)
