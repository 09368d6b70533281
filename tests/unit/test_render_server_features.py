"""The deployment guide's extras through the operator: answerCache, overflow and
logging.redact parse into the spec, render into the flags of whichever container serves
(the builtin server, or the gateway in front of vLLM and TGI), mount their Secrets as
read-only files (never env, never args), and open exactly their peers in the
NetworkPolicy's egress."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers_operator import make_spec
from modeldeploy import contract
from modeldeploy.constants import ANSWER_CACHE_DIR, OVERFLOW_CA_DIR, OVERFLOW_KEY_DIR
from modeldeploy.crd import crd
from modeldeploy.render import networkpolicy, workload
from modeldeploy.render.server_features import (
    OVERFLOW_API_KEY_FILE,
    OVERFLOW_CA_FILE,
    REDIS_PASSWORD_FILE,
    feature_args,
)

pytestmark = pytest.mark.unit

ENGINES = ["builtin", "vllm", "tgi"]
EVERYTHING: dict[str, Any] = {
    "answerCache": {"redisUrl": "redis://redis.cache.svc:6380/2",
                    "passwordSecretName": "redis-auth", "ttlSeconds": 120},
    "overflow": {"url": "https://big.models.svc.cluster.local:9443/v1",
                 "apiKeySecretName": "big-key", "caSecretName": "big-tls",
                 "timeoutSeconds": 45, "redactRequests": True},
    "logging": {"redact": True},
}


# --- spec ---

def test_unset_sections_mean_off() -> None:
    spec = make_spec()
    assert spec.answer_cache is None and spec.overflow is None
    assert spec.logging.redact is False
    assert feature_args(spec) == []


def test_spec_parses_every_field_and_the_defaults() -> None:
    spec = make_spec(EVERYTHING)
    cache, overflow = spec.answer_cache, spec.overflow
    assert cache is not None and overflow is not None
    assert (cache.url, cache.password_secret_name, cache.ttl_seconds) == (
        "redis://redis.cache.svc:6380/2", "redis-auth", 120)
    assert (cache.host, cache.port, cache.service_namespace) == ("redis.cache.svc", 6380, "cache")
    assert (overflow.api_key_secret_name, overflow.ca_secret_name, overflow.timeout_seconds,
            overflow.redact_requests) == ("big-key", "big-tls", 45, True)
    assert (overflow.port, overflow.service_namespace) == (9443, "models")
    assert spec.logging.redact is True
    bare = make_spec({"answerCache": {"redisUrl": "redis://10.0.0.5"},
                      "overflow": {"url": "http://10.0.0.9/v1"}})
    assert bare.answer_cache is not None and bare.overflow is not None
    assert bare.answer_cache.ttl_seconds == contract.DEFAULT_CACHE_TTL_SECONDS
    assert bare.answer_cache.port == contract.REDIS_DEFAULT_PORT
    assert bare.overflow.port == 80 and bare.overflow.timeout_seconds is None
    assert make_spec({"overflow": {"url": "https://api.example/v1"}}).overflow.port == 443


@pytest.mark.parametrize(("url", "ip", "namespace"), [
    ("redis://10.1.2.3:6379", "10.1.2.3", None),
    ("redis://[fd00::5]", "fd00::5", None),
    ("redis://r.cache.svc", None, "cache"),
    ("redis://r.cache.svc.cluster.local", None, "cache"),
    ("redis://r.cache", None, None),            # search-path form: no namespace it can name
    ("redis://r.cache.svc.example.org", None, None),
    ("redis://redis.lan", None, None),
])
def test_peer_host_forms(url: str, ip: str | None, namespace: str | None) -> None:
    cache = make_spec({"answerCache": {"redisUrl": url}}).answer_cache
    assert cache is not None
    assert (str(cache.ip) if cache.ip else None, cache.service_namespace) == (ip, namespace)


# --- flags ---

def test_flags_name_every_field_and_files_not_secrets() -> None:
    args = feature_args(make_spec(EVERYTHING))
    assert args == [
        "--redact-logs",
        "--cache-redis-url", "redis://redis.cache.svc:6380/2", "--cache-ttl", "120",
        "--cache-redis-password-file", REDIS_PASSWORD_FILE,
        "--overflow-url", "https://big.models.svc.cluster.local:9443/v1",
        "--overflow-api-key-file", OVERFLOW_API_KEY_FILE,
        "--overflow-ca-file", OVERFLOW_CA_FILE,
        "--overflow-timeout", "45",
        "--redact-overflow-requests",
    ]


def test_only_what_is_set_is_rendered() -> None:
    args = feature_args(make_spec({"overflow": {"url": "http://10.0.0.9/v1"}}))
    assert args == ["--overflow-url", "http://10.0.0.9/v1"]
    args = feature_args(make_spec({"answerCache": {"redisUrl": "redis://10.0.0.5"}}))
    assert args == ["--cache-redis-url", "redis://10.0.0.5",
                    "--cache-ttl", str(contract.DEFAULT_CACHE_TTL_SECONDS)]


def serving_container(kind: str, overrides: dict[str, Any]) -> tuple[dict[str, Any],
                                                                      dict[str, Any]]:
    spec = make_spec({**overrides, "engine": {"kind": kind}})
    pod = workload.render(spec)["spec"]["template"]["spec"]
    (serving,) = [c for c in pod["containers"] if c.get("ports")]
    return pod, serving


@pytest.mark.parametrize("kind", ENGINES)
def test_the_serving_container_gets_the_flags_and_only_it(kind: str) -> None:
    pod, serving = serving_container(kind, EVERYTHING)
    assert serving["name"] == ("server" if kind == "builtin" else "gateway")
    expected = feature_args(make_spec(EVERYTHING))
    joined = " ".join(serving["args"])
    assert " ".join(expected) in joined
    for other in pod["containers"]:
        if other is not serving:
            assert not any(a.startswith(("--cache-", "--overflow-", "--redact-"))
                           for a in other["args"]), other["name"]


@pytest.mark.parametrize("kind", ENGINES)
def test_secrets_are_read_only_files_of_one_key_each(kind: str) -> None:
    pod, serving = serving_container(kind, EVERYTHING)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in serving["volumeMounts"]}
    for directory, secret, key in ((ANSWER_CACHE_DIR, "redis-auth", "password"),
                                   (OVERFLOW_KEY_DIR, "big-key", "apiKey"),
                                   (OVERFLOW_CA_DIR, "big-tls", "ca.crt")):
        mount = mounts[directory]
        assert mount["readOnly"] is True and "subPath" not in mount  # kubelet refreshes it
        assert volumes[mount["name"]]["secret"] == {
            "secretName": secret, "defaultMode": 0o440, "items": [{"key": key, "path": key}]}
    # never in an environment variable, and no other container mounts them
    text = json.dumps(pod)
    assert "secretKeyRef" not in text
    names = {"answer-cache-password", "overflow-api-key", "overflow-ca"}
    for other in pod["containers"] + pod.get("initContainers", []):
        if other is not serving:
            assert not names & {m["name"] for m in other["volumeMounts"]}, other["name"]


def test_no_secret_no_mount() -> None:
    pod, serving = serving_container("builtin", {
        "answerCache": {"redisUrl": "redis://10.0.0.5"},
        "overflow": {"url": "http://10.0.0.9/v1"}})
    assert not {"answer-cache-password", "overflow-api-key", "overflow-ca"} & {
        v["name"] for v in pod["volumes"]}


# --- NetworkPolicy egress ---

DNS = [{"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]},
       {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]


def egress(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    # pvc:// source: no download, so no 443 rule blurs what the features open
    spec = make_spec({"model": {"source": "pvc://weights/m"}, **overrides})
    np = networkpolicy.render(spec, "modeldeploy-system")
    assert np is not None
    return np["spec"]["egress"]


def ns_peer(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [name]}]}}


def test_egress_is_dns_alone_without_the_features() -> None:
    assert egress({}) == DNS


def test_egress_opens_exactly_redis_and_the_upstream() -> None:
    assert egress(EVERYTHING) == [
        *DNS,
        {"to": [ns_peer("cache")], "ports": [{"protocol": "TCP", "port": 6380}]},
        {"to": [ns_peer("models")], "ports": [{"protocol": "TCP", "port": 9443}]},
    ]


@pytest.mark.parametrize(("section", "overrides", "to", "port"), [
    ("answerCache", {"redisUrl": "redis://10.0.0.5"},
     [{"ipBlock": {"cidr": "10.0.0.5/32"}}], 6379),
    ("answerCache", {"redisUrl": "redis://[fd00::5]:7000"},
     [{"ipBlock": {"cidr": "fd00::5/128"}}], 7000),
    ("overflow", {"url": "http://10.0.0.9/v1"}, [{"ipBlock": {"cidr": "10.0.0.9/32"}}], 80),
    ("overflow", {"url": "https://api.cloud.example/v1",
                  "egressTo": ["203.0.113.0/24", "198.51.100.7/32"]},
     [{"ipBlock": {"cidr": "203.0.113.0/24"}}, {"ipBlock": {"cidr": "198.51.100.7/32"}}], 443),
    # egressTo replaces the peer derived from the host; egressPort the URL's port
    ("overflow", {"url": "http://big.models.svc:80/v1", "egressTo": ["10.244.3.0/24"],
                  "egressPort": 8080},
     [{"ipBlock": {"cidr": "10.244.3.0/24"}}], 8080),
])
def test_egress_peer_of_each_host_form(section: str, overrides: dict[str, Any],
                                       to: list[dict[str, Any]], port: int) -> None:
    assert egress({section: overrides}) == [
        *DNS, {"to": to, "ports": [{"protocol": "TCP", "port": port}]}]


def test_a_host_without_a_peer_is_an_error_naming_the_field() -> None:
    """The CRD refuses it; `modeldeploy render -f` reads files the API server never saw."""
    with pytest.raises(ValueError, match=r"spec\.overflow\.url: host 'api\.cloud\.example'"):
        egress({"overflow": {"url": "https://api.cloud.example/v1"}})


def test_no_networkpolicy_needs_no_peer() -> None:
    spec = make_spec({"overflow": {"url": "https://api.cloud.example/v1"},
                      "network": {"networkPolicy": False}})
    assert networkpolicy.render(spec, "ops") is None
    assert "--overflow-url" in feature_args(spec)


# --- CRD ---

def test_crd_rules_match_the_spec_host_forms() -> None:
    """The CEL rule that requires egressTo and spec.Peer agree on which hosts give a peer:
    the rule's regex, run here with Python's re (RE2 and re agree on this subset)."""
    import re

    from modeldeploy.crd import PEER_HOST_URL

    pattern = re.compile(PEER_HOST_URL.replace("\\\\", "\\"))
    for url, has_peer in [("redis://10.1.2.3:6379", True), ("redis://[fd00::5]", True),
                          ("http://big.models.svc/v1", True),
                          ("https://big.models.svc.cluster.local:8443/v1", True),
                          ("redis://redis.lan", False), ("https://api.cloud.example/v1", False),
                          ("redis://256.1.1.1", False), ("redis://r.cache", False)]:
        spec = make_spec({"overflow": {"url": url}} if url.startswith("http")
                         else {"answerCache": {"redisUrl": url}})
        peer = spec.overflow or spec.answer_cache
        assert peer is not None
        assert bool(pattern.match(url)) is has_peer, url
        assert (peer.ip is not None or peer.service_namespace is not None) is has_peer, url


def test_crd_has_the_sections_and_their_rules() -> None:
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    p = props["properties"]
    assert p["answerCache"]["required"] == ["redisUrl"]
    assert p["overflow"]["required"] == ["url"]
    assert set(p["overflow"]["properties"]) == {
        "url", "apiKeySecretName", "caSecretName", "timeoutSeconds", "redactRequests",
        "egressTo", "egressPort"}
    assert set(p["logging"]["properties"]) == {"redact"}
    messages = [r["message"] for r in props["x-kubernetes-validations"]]
    assert any(m.startswith("overflow.egressTo is required") for m in messages)
    assert any(m.startswith("answerCache.egressTo is required") for m in messages)
