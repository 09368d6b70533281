"""vLLM and TGI behind `modelserver gateway`: the engine on loopback with no TLS and no key,
the gateway on network.port with the builtin engine's security flags, mounts, probes and
Service, a Guaranteed pod kept, and no pod reading anything but `keys` from the API key
Secret (so a user-made Secret holding only `keys` works for every engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from helpers_operator import arg_value, inputs, make_spec
from modeldeploy.constants import (
    DEFAULT_IMAGE,
    ENGINE_LOOPBACK_PORT,
    GATEWAY_CPU,
    GATEWAY_MEMORY,
    IMAGE_UID,
)
from modeldeploy.crd import crd
from modeldeploy.quantity import parse as parse_quantity
from modeldeploy.render import desired, engines, service, workload
from modeldeploy.render.server_security import security_args

pytestmark = pytest.mark.unit

BEHIND_GATEWAY = ["vllm", "tgi"]
ENGINES = ["builtin", *BEHIND_GATEWAY]
SECURE = {"network": {"port": 9443, "allowFrom": {"ipBlocks": ["192.168.1.0/24"]},
                      "ingress": {"host": "chat.lan", "trustedProxies": ["10.244.0.0/16"]}},
          "tls": {"minVersion": "1.2"}, "auth": {"apiKeys": {"count": 3}}}


def pod_of(overrides: dict[str, Any]) -> dict[str, Any]:
    return workload.render(make_spec(overrides))["spec"]["template"]["spec"]


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["containers"]}


def mount_names(c: dict[str, Any]) -> set[str]:
    return {m["name"] for m in c["volumeMounts"]}


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


@pytest.mark.parametrize("kind", BEHIND_GATEWAY)
def test_engine_listens_on_loopback_with_no_tls_and_no_key(kind: str) -> None:
    engine = by_name(pod_of({"engine": {"kind": kind}, **SECURE}))["server"]
    a = engine["args"]
    assert arg_value(a, "--host" if kind == "vllm" else "--hostname") == "127.0.0.1"
    assert arg_value(a, "--port") == str(ENGINE_LOOPBACK_PORT)
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--enable-ssl-refresh", "--api-key",
                 "--tls-cert", "--api-keys-file"):
        assert flag not in a, flag
    assert not {"API_KEY", "VLLM_API_KEY"} & {e["name"] for e in engine["env"]}
    assert not {"tls", "api-keys"} & mount_names(engine)
    # On loopback the kubelet's httpGet cannot reach it: no port, and exec probes (startup
    # and liveness: a hung engine is restarted itself) that dial 127.0.0.1 from inside.
    assert "ports" not in engine and "readinessProbe" not in engine
    for probe in ("startupProbe", "livenessProbe"):
        command = engine[probe]["exec"]["command"]
        assert command == workload.engine_health_command(ENGINE_LOOPBACK_PORT, "/health")
    assert engine["startupProbe"]["periodSeconds"] * engine["startupProbe"][
        "failureThreshold"] >= make_spec({"engine": {"kind": kind}}).engine.startup_timeout_seconds


@pytest.mark.parametrize("kind", BEHIND_GATEWAY)
def test_gateway_serves_the_port_with_the_builtin_security_flags(kind: str) -> None:
    spec = make_spec({"engine": {"kind": kind}, **SECURE})
    pod = workload.render(spec)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["server", "gateway"]
    gw = by_name(pod)["gateway"]
    assert gw["image"] == DEFAULT_IMAGE and gw["command"] == ["modelserver"]
    assert gw["args"] == [
        "gateway", "--upstream", f"http://127.0.0.1:{ENGINE_LOOPBACK_PORT}", "--port", "9443",
        "--tls-cert", "/etc/modelserver/tls/tls.crt", "--tls-key",
        "/etc/modelserver/tls/tls.key", "--tls-min-version", "1.2",
        "--api-keys-file", "/etc/modelserver/auth/keys",
        "--allow-cidr", "192.168.1.0/24", "--trusted-proxy-cidr", "10.244.0.0/16",
        "--max-concurrent-requests", str(spec.engine.max_concurrent_requests)]
    # One function renders the security flags of `serve` and `gateway`.
    builtin = engines.plan(make_spec(SECURE)).args
    start = builtin.index("--tls-cert")
    assert builtin[start:start + len(security_args(spec))] == security_args(spec)
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/modelserver/tls",
                             "readOnly": True}
    assert mounts["api-keys"] == {"name": "api-keys", "mountPath": "/etc/modelserver/auth",
                                  "readOnly": True}
    assert "model-cache" not in mounts and "shm" not in mounts
    assert gw["ports"] == [{"name": "api", "containerPort": 9443, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe"):
        assert gw[probe]["httpGet"] == {"path": "/health", "port": "api", "scheme": "HTTPS"}
    # Its liveness is its own: /health follows the engine, and failing it would restart the
    # gateway, never the hung engine.
    assert gw["livenessProbe"]["tcpSocket"] == {"port": "api"}
    assert gw["startupProbe"]["periodSeconds"] * gw["startupProbe"]["failureThreshold"] >= \
        spec.engine.startup_timeout_seconds
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "m-tls"
    assert vols["api-keys"]["secret"] == {"secretName": "m-api-keys", "defaultMode": 0o440}


@pytest.mark.parametrize("kind", BEHIND_GATEWAY)
def test_gateway_without_tls_and_auth(kind: str) -> None:
    pod = pod_of({"engine": {"kind": kind}, "tls": {"mode": "disabled"},
                  "auth": {"enabled": False}})
    gw = by_name(pod)["gateway"]
    assert "--no-tls" in gw["args"] and "--no-auth" in gw["args"]
    assert "--tls-cert" not in gw["args"] and "--api-keys-file" not in gw["args"]
    assert gw["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not {"tls", "api-keys"} & {v["name"] for v in pod["volumes"]}


def test_builtin_stays_one_container_that_serves_the_port() -> None:
    pod = pod_of(SECURE)
    (server,) = pod["containers"]
    assert server["args"][0] == "serve" and arg_value(server["args"], "--port") == "9443"
    assert {"tls", "api-keys"} <= mount_names(server)
    assert server["ports"][0]["containerPort"] == 9443
    assert all(p in server for p in PROBES)


@pytest.mark.parametrize("kind", BEHIND_GATEWAY)
def test_gateway_runs_as_the_image_user_locked_down(kind: str) -> None:
    pod = pod_of({"engine": {"kind": kind}})
    gw = by_name(pod)["gateway"]
    assert gw["securityContext"] == workload.container_security()
    assert "runAsUser" not in gw["securityContext"]  # the pod's: IMAGE_UID
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert gw["securityContext"]["runAsNonRoot"] is True
    # TGI's engine alone is root (its Python lives under /root).
    expected_engine_uid = 0 if kind == "tgi" else None
    assert by_name(pod)["server"]["securityContext"].get("runAsUser") == expected_engine_uid


def qos_class(pod: dict[str, Any]) -> str:
    """Kubernetes' rule (pkg/apis/core/helper/qos): Guaranteed when every container sets
    cpu and memory limits and its requests (defaulted to limits) equal them."""
    guaranteed, any_set = True, False
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        res = c.get("resources", {})
        limits, requests = res.get("limits", {}), res.get("requests", {})
        for r in ("cpu", "memory"):
            if r in limits or r in requests:
                any_set = True
            if r not in limits or parse_quantity(str(requests.get(r, limits[r]))) != \
                    parse_quantity(str(limits[r])):
                guaranteed = False
    return "Guaranteed" if guaranteed else ("Burstable" if any_set else "BestEffort")


@pytest.mark.parametrize("kind", ENGINES)
def test_guaranteed_qos_is_kept_with_the_gateway(kind: str) -> None:
    spec = {"engine": {"kind": kind}, "resources": {"gpus": 1}, "model": {"cache": {}}}
    pod = pod_of(spec)
    assert qos_class(pod) == "Guaranteed"
    if kind != "builtin":
        res = by_name(pod)["gateway"]["resources"]
        size = {"cpu": GATEWAY_CPU, "memory": GATEWAY_MEMORY}
        assert res == {"requests": size, "limits": size}
    # The check can fail: without qos.guaranteed the engine has no cpu limit.
    assert qos_class(pod_of({**spec, "qos": {"guaranteed": False}})) == "Burstable"


@pytest.mark.parametrize("kind", ENGINES)
def test_the_service_targets_the_container_that_serves_the_port(kind: str) -> None:
    spec = make_spec({"engine": {"kind": kind}, "network": {"port": 9000}})
    port = service.render(spec)["spec"]["ports"][0]
    pod = workload.render(spec)["spec"]["template"]["spec"]
    named = [c["name"] for c in pod["containers"]
             for p in c.get("ports", []) if p["name"] == port["targetPort"]]
    assert named == ["server" if kind == "builtin" else "gateway"]
    assert port["port"] == 9000


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("user_secret", [False, True])
def test_no_pod_reads_more_than_keys_from_the_api_key_secret(kind: str,
                                                             user_secret: bool) -> None:
    """A user-made Secret holds only `keys` (the CRD says so): any secretKeyRef (to
    `primary` or anything else) would stop the pod with CreateContainerConfigError, and an
    env var would never see a rotated key."""
    auth = ({"apiKeys": {"generate": False, "secretName": "mine"}} if user_secret else {})
    spec = make_spec({"engine": {"kind": kind}, "auth": auth})
    children = desired(spec, inputs())
    refs = [v for k, v in walk(children) if k == "secretKeyRef"]
    assert refs == []
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    # The whole Secret is mounted (no `items` list naming other keys), and the flag reads
    # `keys` from it.
    assert keys_volume["secret"] == {"secretName": "mine" if user_secret else "m-api-keys",
                                     "defaultMode": 0o440}
    serving = pod["containers"][-1]
    assert arg_value(serving["args"], "--api-keys-file") == "/etc/modelserver/auth/keys"


@pytest.mark.parametrize("kind", BEHIND_GATEWAY)
def test_the_engines_own_port_is_refused_as_network_port(kind: str) -> None:
    with pytest.raises(ValueError, match="network.port"):
        engines.plan(make_spec({"engine": {"kind": kind},
                                "network": {"port": ENGINE_LOOPBACK_PORT}}))
    # The builtin engine has no port of its own behind network.port.
    engines.plan(make_spec({"network": {"port": ENGINE_LOOPBACK_PORT}}))


def spec_rules() -> list[dict[str, str]]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"]


def test_crd_refuses_the_engine_port_and_no_longer_forces_plain_http_on_tgi() -> None:
    rules = spec_rules()
    port_rules = [r for r in rules if r.get("fieldPath") == ".network.port"]
    assert len(port_rules) == 1
    assert f"self.network.port != {ENGINE_LOOPBACK_PORT}" in port_rules[0]["rule"]
    assert port_rules[0]["message"].startswith("network.port:")
    text = json.dumps(rules)
    assert "self.tls.mode == 'disabled'" not in text
    # The allow-list behind an Ingress is enforced for every engine now (by the gateway),
    # so trustedProxies is required for every engine.
    trusted = next(r for r in rules if r.get("fieldPath") == ".network.ingress.trustedProxies")
    assert "engine.kind" not in trusted["rule"]
